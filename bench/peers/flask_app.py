"""The first version: Flask + requests, blocking, run under gunicorn sync workers."""

from __future__ import annotations

import os
import sqlite3

import requests
from flask import Flask, Response, jsonify

API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com")
OWNER = os.environ.get("GITHUB_OWNER", "octo-dev")
DB_PATH = os.environ.get("BENCH_SQLITE_PATH", "bench.db")

app = Flask(__name__)
session = requests.Session()


@app.get("/health")
def health() -> Response:
    return jsonify(api="website-api", version=1, status="ok")


@app.get("/github/repos")
def repos() -> Response:
    response = session.get(f"{API_URL}/users/{OWNER}/repos", params={"per_page": 100}, timeout=10)
    response.raise_for_status()
    keep = ("name", "full_name", "html_url", "description", "language", "stargazers_count", "pushed_at")
    items = [{k: r.get(k) for k in keep} for r in response.json()]
    items.sort(key=lambda r: r["pushed_at"] or "", reverse=True)
    return jsonify(items[:30])


@app.get("/announcements")
def announcements() -> Response:
    with sqlite3.connect(DB_PATH) as conn:
        rows = conn.execute(
            "SELECT id, title, body, pinned, published_at FROM announcements ORDER BY pinned DESC, published_at DESC LIMIT 20"
        ).fetchall()
    return jsonify([dict(zip(("id", "title", "body", "pinned", "published_at"), r, strict=True)) for r in rows])
