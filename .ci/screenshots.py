#!/usr/bin/env python3
"""Screenshots of the addon's screens in a real headless Chromium (README pictures, a visual check).

    python3 .ci/screenshots.py --url http://127.0.0.1:8069 --db fusion_billing --out static/description [--login admin --password admin]

Drives Debian's `chromium` through the DevTools protocol over a pipe (--remote-debugging-pipe: no
port, no extra package): logs in through /web/login, opens each screen, waits until Odoo has
rendered it and saves a PNG. Run it against `.ci/serve` filled by `.ci/demo_data.py` (see
`.ci/screenshots`, which does all three). Python standard library only.
"""
import argparse
import base64
import fcntl
import http.cookiejar
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-pipe"]


class Chromium:
    """A headless Chromium and one page, spoken to over fds 3 (commands) and 4 (replies)."""

    def __init__(self, width, height):
        self.profile = tempfile.mkdtemp(prefix="fusion-billing-chromium.")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def plumb():  # in the child: its fd 3 reads our commands, its fd 4 writes its replies
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)  # dup2 makes them inheritable (os.pipe's are close-on-exec)
            os.dup2(high_w, 4)
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or sys.exit("no chromium installed")
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"], preexec_fn=plumb, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.session = b"", 0, None
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.send("Page.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def send(self, method, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def receive(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.25)
        raise RuntimeError(f"timed out waiting for {expression}")

    def goto(self, url):
        self.send("Page.navigate", url=url)
        time.sleep(0.5)
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        for fd in (self.to_browser, self.from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Rpc:
    """JSON-RPC as the same user, to find the records to show."""

    def __init__(self, url, db, login, password):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.call("/web/session/authenticate", {"db": db, "login": login, "password": password})

    def call(self, route, params):
        request = urllib.request.Request(self.url + route, json.dumps({"jsonrpc": "2.0", "method": "call",
                                                                       "params": params}).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.loads(self.opener.open(request, timeout=60).read())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def search(self, model, domain, order="id", limit=1):
        return self.call("/web/dataset/call_kw", {"model": model, "method": "search", "args": [domain],
                                                  "kwargs": {"order": order, "limit": limit}})


RENDERED = """(() => {
    const view = document.querySelector('.o_action_manager .o_view_controller, .o_action_manager .o_form_view');
    return !!view && !document.querySelector('.o_loading_indicator, .o_blockUI, .o_list_loading')
        && !document.querySelector('.o_view_sample_data .o_list_renderer:empty');
})()"""


def click(text, selector="a.nav-link, button"):
    """JavaScript clicking the first ``selector`` element whose text is (or, for a stat button, contains) ``text``."""
    return (f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})].find(e => "
            f"e.textContent.trim() === {json.dumps(text)} || (e.classList.contains('oe_stat_button') && "
            f"e.textContent.includes({json.dumps(text)}))); if (el) el.click(); return !!el; }})()")


def screens(rpc):
    """(file name, path, JavaScript to run once rendered or None)."""
    action = "/odoo/action-fusion_centralize_billing."
    desk = rpc.search("fusion.billing.service", [("code", "=", "nexadesk")])
    cloud = rpc.search("fusion.billing.service", [("code", "=", "nexacloud")])
    run = rpc.search("fusion.billing.import.run", [("failed_count", ">", 0)], order="id desc")
    shots = [("import_history.png", f"{action}fusion_billing_import_run_action", None)]
    if run:
        shots.append(("import_run.png", f"{action}fusion_billing_import_run_action/{run[0]}", click("Reported Rows")))
    if desk:
        shots.append(("service_overview.png", f"{action}fusion_billing_service_action/{desk[0]}", None))
    if cloud:
        shots.append(("service_overview_nexacloud.png", f"{action}fusion_billing_service_action/{cloud[0]}", None))
    shots.append(("usage.png", f"{action}fusion_billing_usage_action", None))
    return shots


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8069")
    parser.add_argument("--out", default="static/description")
    parser.add_argument("--db", default="fusion_billing")
    parser.add_argument("--login", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="file names to take (default: all)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    shots = screens(Rpc(args.url, args.db, args.login, args.password))
    browser = Chromium(args.width, args.height)
    try:
        browser.goto(f"{args.url}/web/login")
        browser.wait_for("!!document.querySelector('input[name=login]')")
        browser.evaluate(f"""(() => {{ const form = document.querySelector('form.oe_login_form');
            form.querySelector('input[name=login]').value = {json.dumps(args.login)};
            form.querySelector('input[name=password]').value = {json.dumps(args.password)};
            form.submit(); return true; }})()""")
        time.sleep(1)
        browser.wait_for("document.readyState === 'complete' && !location.pathname.startsWith('/web/login')")
        for name, path, script in shots:
            if args.only and name not in args.only:
                continue
            browser.goto(args.url + path)
            browser.wait_for(RENDERED)
            if script:
                browser.evaluate(script)
                browser.wait_for(RENDERED)
            time.sleep(1.5)  # fonts, charts and the last requests settle
            browser.screenshot(os.path.join(args.out, name))
            print(f"  {name}  ←  {path}")
    finally:
        browser.close()


if __name__ == "__main__":
    main()
