"""Helpers that several test modules share; no tests here, so nothing in it is collected."""
