"""The trackmw demo site on Flask.

Run it from the repository's root::

    gunicorn --chdir examples/flask_app app:app

Settings come from ``TRACKMW_*`` environment variables; unset ones get demo defaults
(a demo secret key, the store ``sqlite:///trackmw-demo.db`` in the working directory,
which ``--chdir`` makes ``examples/flask_app``). Set ``TRACKMW_DASHBOARD_TOKEN`` to open
the dashboard at ``/_trackmw/dashboard``. Each gunicorn worker has its own tracker; a
worker stopped with SIGTERM writes what it buffered before it exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask, Response, redirect, request

from trackmw.flask import Tracking, current_visitor

# The pages both examples share live in examples/common (each example runs on its own,
# from its own directory, so that directory is put on the import path here).
COMMON = Path(__file__).resolve().parent.parent / "common"
sys.path.insert(0, str(COMMON))
import demo_pages as pages  # noqa: E402

tracker = pages.build_tracker()

app = Flask(__name__, static_folder=COMMON / "static")
app.config["MAX_CONTENT_LENGTH"] = 4096  # the forms here are tiny
Tracking(app, tracker)


def _html(title: str, body: str, status: int = 200) -> Response:
    html = pages.page(tracker, current_visitor, request.path, title, body)
    return Response(html, status=status, mimetype="text/html")


def _foreign() -> bool:
    headers = request.headers
    return not pages.same_origin_post(
        headers.get("origin"), headers.get("referer"), request.host, request.scheme
    )


def _see_other(location: str) -> Response:
    return redirect(location, code=303)  # type: ignore[return-value]


@app.get("/")
@app.get("/about")
@app.get("/blog")
def content() -> Response:
    """Home, About and Blog."""
    title, body = pages.content_body(request.path)
    return _html(title, body)


@app.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """The sign-in form; a good name and password link the visitor to the user."""
    if request.method == "GET":
        return _html("Sign in", pages.login_body())
    if _foreign():
        return Response("refused", status=403)
    user_id = pages.check_login(request.form.get("username", ""), request.form.get("password", ""))
    if user_id is None:
        return _html("Sign in", pages.login_body("Wrong name or password."), 401)
    current_visitor.identify(user_id)
    return _see_other("/")


@app.post("/logout")
def logout() -> Response:
    """Unlink the user from the visitor cookie."""
    if _foreign():
        return Response("refused", status=403)
    current_visitor.forget_user()
    return _see_other("/")


@app.route("/settings", methods=["GET", "POST"])
def settings() -> Response:
    """Privacy settings: the choice, preferences, the visitor's data and erasure."""
    message = None
    if request.method == "POST":
        if _foreign():
            return Response("refused", status=403)
        for name, value in pages.clean_preferences(request.form).items():
            current_visitor.preferences[name] = value
        if current_visitor.consent.preferences:
            return _see_other("/settings?saved=1")
        message = "Not saved: you do not allow preference cookies. Shown on this page only."
    elif request.args.get("saved"):
        message = "Preferences saved."
    elif request.args.get("erased"):
        message = "Everything this site held about you has been erased."
    return _html("Privacy settings", pages.settings_body(tracker, current_visitor, message))


@app.get("/privacy")
def privacy() -> Response:
    """The privacy statement (the ``privacy_url`` setting points here)."""
    return _html("Privacy statement", pages.privacy_body(tracker))
