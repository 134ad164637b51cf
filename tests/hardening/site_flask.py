"""A tiny Flask site wrapped with trackmw, for the real-server hardening tests.

Settings come from ``TRACKMW_*``. With ``HARDENING_OPEN_STORE=1`` the store is opened
(and read) at import: under gunicorn ``--preload`` that happens in the master, before
the workers are forked.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify

from trackmw import Tracker
from trackmw.flask import Tracking, current_visitor

tracker = Tracker.from_env()
if os.environ.get("HARDENING_OPEN_STORE") == "1":
    tracker.stats()  # opens a connection in this (the parent) process

app = Flask(__name__)
Tracking(app, tracker)


@app.get("/")
def home() -> Response:
    """A page with the beacon."""
    tag = current_visitor.beacon_tag()
    return Response(f"<!doctype html><title>home</title><p>home</p>{tag}", mimetype="text/html")


@app.get("/accept")
def accept() -> Response:
    """Consent and a preference: three trackmw cookies on a first visit."""
    current_visitor.accept()
    current_visitor.preferences["theme"] = "dark"
    return Response("accepted", mimetype="text/plain")


@app.get("/reject")
def reject() -> Response:
    """A rejection: the tracking cookies are deleted."""
    current_visitor.reject()
    return Response("rejected", mimetype="text/plain")


@app.get("/public")
def public() -> Response:
    """A page the app itself marks as cacheable by shared caches."""
    response = Response("public", mimetype="text/plain")
    response.headers["Cache-Control"] = "public, max-age=600, s-maxage=600"
    response.headers["Vary"] = "Accept-Encoding"
    return response


@app.get("/pid")
def pid() -> Response:
    """The worker's process id."""
    return jsonify(pid=os.getpid())
