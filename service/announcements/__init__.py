"""Announcements the site shows: SQLite by default, PostgreSQL via DATABASE_URL, written with an admin token."""
