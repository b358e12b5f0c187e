"""A learner's session in a real browser: headless JupyterLab, driven by Playwright with Debian's Chromium.

    python scripts/check_browser.py                  # what `make test-browser` runs; screenshots in build/screenshots
    python scripts/check_browser.py --out DIR        # screenshots elsewhere
    python scripts/check_browser.py --site build/site   # also open the built site with the network blocked

Steps (each one asserted; the script exits 1 on the first failure and says which):

1. Copy notebooks 14 (drill) and 03 (a widget notebook) into a scratch folder, start JupyterLab on it (a random
   port on 127.0.0.1, a random token), and open notebook 14 as saved in the repository: the widget cells must show
   their plain-text line ("[interactive] ...") and no "Error displaying widget". Screenshot ``14_fresh.png``.
2. Run all cells; wait until every cell has run. No cell may show an error, a traceback or stderr.
3. Quiz: set the quiz widget's kind filter to "numeric", answer the first question wrong (the feedback must say
   ``TRY AGAIN [<id>] not yet`` and name the common mistake), then right (``PASS [<id>] correct``); the expected
   answer is computed with :mod:`lorakit.drill`, as the widget does. Screenshots ``14_quiz_wrong.png``,
   ``14_quiz_right.png``.
4. Slider: move the rank slider of the LoRA parameter calculator one step with the keyboard; the printed line and
   the plot must change. Screenshot ``14_slider.png``.
5. Notebook 03 (``--widget-notebook`` to pick another): fresh, its widget cells show their plain-text line; run
   all; move the first widget's slider (03: the rsLoRA scaling explorer's r); its line and plot must change; no
   errors. Screenshots ``03_fresh.png``, ``03_widget_slider.png``.
6. With ``--site``: load the built site's notebook 14 page with every non-local request aborted; math must be
   typeset by the vendored MathJax. Screenshot ``site_offline.png``.

Needs ``playwright`` (PyPI) and Debian's ``chromium`` (Playwright's own browser download is not used). When
Chromium is missing and we are root, it is installed with apt (``chromium fonts-noto-color-emoji``); otherwise the
script prints ``SKIP: ...`` and exits 0.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_14 = "14_interview_drill.ipynb"
NOTEBOOK_03 = "03_scaling_rslora.ipynb"
ERROR_TEXTS = ("Traceback (most recent call last)", "Error displaying widget", "model not found")


class Failure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)
    print(f"  ok: {message}", flush=True)


# ---------------------------------------------------------------------------------------------- prerequisites
def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """The Chromium executable, installing Debian's package when we are root; else None and why."""
    path = find_chromium()
    if path:
        return path, ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "Chromium is not installed and we are not root on a Debian system (apt-get install chromium)"
    print("installing Debian's chromium and fonts-noto-color-emoji with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "fonts-noto-color-emoji"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return None, f"'{' '.join(cmd)}' failed: {done.stderr.strip()[-300:]}"
    path = find_chromium()
    return (path, "") if path else (None, "apt-get installed chromium but no chromium executable is on PATH")


# ---------------------------------------------------------------------------------------------- JupyterLab
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_settings(root: Path) -> Path:
    """User settings for the scratch JupyterLab: render every cell (not only the visible ones, JupyterLab 4's
    default "windowing"), so the whole notebook's text can be read and every widget is laid out."""
    settings = root / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    return root / "lab-settings"


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(lab_settings(root)),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    for _ in range(120):
        if proc.poll() is not None:
            raise Failure(f"JupyterLab exited: {(root / 'jupyterlab.log').read_text()[-800:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    raise Failure("JupyterLab did not start within 120 s")


# ---------------------------------------------------------------------------------------------- page helpers
def open_notebook(page, port: int, token: str, name: str) -> None:
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000)
    time.sleep(2)


def notebook_text(page) -> str:
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").inner_text()


def run_all(page, timeout_s: int) -> None:
    """Run every cell and wait until none is queued or running and the kernel is idle."""
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget; const k = w && w.sessionContext.session &&"
        " w.sessionContext.session.kernel; return k && k.status === 'idle'; }", timeout=180_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.time() + timeout_s
    time.sleep(3)
    stalled = 0
    while time.time() < deadline:
        state = page.evaluate(
            "() => { const w = window.jupyterapp.shell.currentWidget; const cells = w.content.widgets;"
            " const code = cells.filter(c => c.model.type === 'code');"
            " const pending = code.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length;"
            " const unrun = code.filter(c => c.model.sharedModel.source.trim() && c.model.executionCount === null)"
            ".length; return {pending, unrun, status: w.sessionContext.session.kernel.status}; }")
        if state["pending"] == 0 and state["unrun"] == 0 and state["status"] == "idle":
            time.sleep(2)  # let the last widget views render
            return
        stalled = stalled + 1 if state["pending"] == 0 and state["status"] == "idle" else 0
        if stalled >= 5:  # idle, nothing queued, cells left: Run All stopped at an error
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            first = errors.first.inner_text()[-600:] if errors.count() else "(no error output found)"
            raise Failure(f"Run All stopped with {state['unrun']} cells not run: {first}")
        time.sleep(2)
    raise Failure(f"the notebook did not finish within {timeout_s} s")


def no_errors(page, label: str) -> None:
    text = notebook_text(page)
    for bad in ERROR_TEXTS:
        check(bad not in text, f"{label}: no cell shows {bad!r}")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    check(errors == 0, f"{label}: no cell has an error or stderr output (found {errors})")


def widget(page, title_fragment: str):
    """The ipywidgets panel (class lorakit-widget) whose text contains ``title_fragment``."""
    loc = page.locator(".lorakit-widget", has_text=title_fragment).first
    loc.scroll_into_view_if_needed(timeout=30_000)
    return loc


def image_src(panel) -> str:
    return panel.locator("img").first.get_attribute("src") or ""


def nudge_slider(panel, index: int = 0) -> None:
    handle = panel.locator(".noUi-handle, .ui-slider-handle, [role='slider']").nth(index)
    handle.scroll_into_view_if_needed()
    handle.click()
    handle.press("ArrowRight")
    time.sleep(3)


# ---------------------------------------------------------------------------------------------- the steps
def expected_quiz_question():
    sys.path.insert(0, str(ROOT))
    from lorakit.drill import Quiz, load_bank

    return Quiz(load_bank(), topics="lora-math", kinds="numeric", seed=0).current


def drill_steps(page, port: int, token: str, shots: Path, timeout_s: int) -> None:
    print("notebook 14: fresh, as committed", flush=True)
    open_notebook(page, port, token, NOTEBOOK_14)
    text = notebook_text(page)
    check("[interactive] quiz over the question bank" in text, "a widget cell shows its friendly line before running")
    check("VBox(children" not in text and "interactive(children" not in text, "no widget shows a raw repr")
    check(not any(bad in text for bad in ERROR_TEXTS), "no 'Error displaying widget' before running")
    page.screenshot(path=str(shots / "14_fresh.png"))

    print("notebook 14: run all", flush=True)
    run_all(page, timeout_s)
    no_errors(page, "notebook 14")

    print("notebook 14: quiz", flush=True)
    q = expected_quiz_question()
    quiz = page.locator(".lorakit-widget", has=page.locator(".lorakit-quiz-check")).first
    quiz.scroll_into_view_if_needed()
    kind = quiz.locator("select").nth(2)
    kind.select_option(label="numeric")
    page.wait_for_function("id => document.querySelector('.lorakit-quiz-question') &&"
                           " document.querySelector('.lorakit-quiz-question').textContent.includes(id)",
                           arg=f"[{q.id}]", timeout=30_000)
    check(True, f"the kind filter restarted the quiz on {q.id}")
    wrong = q.wrong_value if q.wrong_value is not None else q.answer * 3 + 1
    box = quiz.locator(".lorakit-quiz-number input")
    box.fill(str(wrong))
    quiz.locator("button.lorakit-quiz-check").click()
    feedback = quiz.locator(".lorakit-quiz-feedback")
    feedback.get_by_text("TRY AGAIN").wait_for(timeout=30_000)
    text = feedback.inner_text()
    check(f"TRY AGAIN [{q.id}] not yet" in text and "Common mistake" in text and "Why:" in text,
          "a wrong answer gets 'TRY AGAIN', the explanation and the common mistake")
    quiz.screenshot(path=str(shots / "14_quiz_wrong.png"))
    box.fill(str(int(q.answer)) if float(q.answer).is_integer() else repr(q.answer))
    quiz.locator("button.lorakit-quiz-check").click()
    feedback.get_by_text("PASS").wait_for(timeout=30_000)
    check(f"PASS [{q.id}] correct" in feedback.inner_text(), "the right answer gets 'PASS ... correct'")
    check("1/1 correct" in quiz.locator(".lorakit-quiz-score").inner_text(),
          "the score by topic keeps the latest answer to the question")
    quiz.screenshot(path=str(shots / "14_quiz_right.png"))

    print("notebook 14: parameter calculator slider", flush=True)
    calc = widget(page, "LoRA trains")
    before_text, before_img = calc.locator("code").first.inner_text(), image_src(calc)
    nudge_slider(calc)
    after_text, after_img = calc.locator("code").first.inner_text(), image_src(calc)
    check(after_text != before_text, f"the line changes: {before_text[:40]!r} -> {after_text[:40]!r}")
    check(after_img != before_img and after_img, "the plot changes")
    calc.screenshot(path=str(shots / "14_slider.png"))
    no_errors(page, "notebook 14 after the interactions")


def widget_notebook_steps(page, port: int, token: str, shots: Path, timeout_s: int, name: str) -> None:
    stem = name[:2]
    print(f"notebook {stem}: run all, move the first widget's slider", flush=True)
    open_notebook(page, port, token, name)
    text = notebook_text(page)
    check("[interactive] " in text and not any(bad in text for bad in ERROR_TEXTS),
          f"notebook {stem}: widget cells show their friendly line before running")
    page.screenshot(path=str(shots / f"{stem}_fresh.png"))
    run_all(page, timeout_s)
    no_errors(page, f"notebook {stem}")
    panel = page.locator(".lorakit-widget", has=page.locator("img")).first
    panel.scroll_into_view_if_needed(timeout=30_000)
    before_text, before_img = panel.locator("code").first.inner_text(), image_src(panel)
    nudge_slider(panel)
    after_text, after_img = panel.locator("code").first.inner_text(), image_src(panel)
    check(after_text != before_text, f"the widget's line changes: {before_text[:30]!r} -> {after_text[:30]!r}")
    check(after_img != before_img and after_img, "the widget's plot changes")
    panel.screenshot(path=str(shots / f"{stem}_widget_slider.png"))
    no_errors(page, f"notebook {stem} after the slider")


def site_steps(browser, site: Path, shots: Path) -> None:
    print("site: notebook 14 page with the network blocked", flush=True)
    context = browser.new_context()
    blocked: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.goto((site / "notebooks" / "03_scaling_rslora.html").resolve().as_uri())
    page.wait_for_selector("mjx-container", timeout=60_000)
    check(page.locator("mjx-container").count() > 5, "MathJax typeset the page offline")
    check(not [u for u in blocked if not u.startswith("data:")], f"the page asked for nothing remote: {blocked[:3]}")
    page.screenshot(path=str(shots / "site_offline.png"))
    context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "screenshots")
    parser.add_argument("--site", type=Path, help="also check this built site offline (make site)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds to wait for a notebook's Run All")
    parser.add_argument("--widget-notebook", default=NOTEBOOK_03,
                        help="the second notebook (one with a widget): a name in notebooks/ or a path")
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIP: the Python package playwright is not installed (pip install playwright)")
        return 0
    chromium, why = ensure_chromium()
    if chromium is None:
        print(f"SKIP: {why}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="lorakit-browser-"))
    widget_source = Path(args.widget_notebook)
    if not widget_source.is_file():
        widget_source = ROOT / "notebooks" / args.widget_notebook
    shutil.copy2(ROOT / "notebooks" / NOTEBOOK_14, scratch / NOTEBOOK_14)
    shutil.copy2(widget_source, scratch / widget_source.name)
    os.environ["LORAKIT_DRILL_DIR"] = str(scratch / "drill")  # the flashcards never touch the real home folder
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(scratch, port, token)
    start = time.time()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            try:
                drill_steps(page, port, token, args.out, args.timeout)
                widget_notebook_steps(page, port, token, args.out, args.timeout, widget_source.name)
                if args.site:
                    site_steps(browser, args.site, args.out)
            except Exception:
                page.screenshot(path=str(args.out / "failure.png"), full_page=True)
                raise
            browser.close()
    except Failure as failure:
        print(f"FAILED: {failure} (screenshot: {args.out / 'failure.png'})")
        return 1
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    shots = sorted(p.name for p in args.out.glob("*.png"))
    print(f"browser check passed in {time.time() - start:.0f} s; screenshots in {args.out}: {', '.join(shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
