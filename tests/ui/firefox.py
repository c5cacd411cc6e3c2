"""Debian's Firefox ESR driven over WebDriver BiDi, which Firefox serves itself.

Playwright's Firefox support needs its own patched build (`playwright install`, not allowed
here) or, through its `moz-firefox` channel, a newer Firefox than Debian's ESR (it calls
`emulation.setMediaFeaturesOverride`, unknown to ESR 153); Selenium needs geckodriver, which
Debian does not package. So this is the few BiDi commands the dashboard test needs, by hand.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time

import websocket

from bench._common import free_port

# Quiet profile: no update, telemetry or remote-settings traffic to wait on or to confuse the test.
PREFS = {
    "app.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.shell.checkDefaultBrowser": False,
    "network.captive-portal-service.enabled": False,
}


class Firefox:
    def __init__(self, executable: str = "/usr/bin/firefox-esr", width: int = 1400, height: int = 1000):
        self.profile = tempfile.TemporaryDirectory()
        with open(f"{self.profile.name}/user.js", "w") as f:
            f.writelines(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items())
        port = free_port()
        self.proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-remote",
                "--profile",
                self.profile.name,
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:  # "WebDriver BiDi listening on ws://127.0.0.1:PORT"
            if m := re.search(r"WebDriver BiDi listening on (ws://\S+)", line):
                break
        else:
            raise RuntimeError("Firefox exited before serving WebDriver BiDi")
        threading.Thread(
            target=lambda: [None for _ in self.proc.stderr], daemon=True
        ).start()  # keep draining
        self.ws = websocket.create_connection(m.group(1) + "/session", suppress_origin=True, timeout=60)
        self.n, self.events = 0, []
        self.version = self.cmd("session.new", capabilities={})["capabilities"]["browserVersion"]
        self.context = self.cmd("browsingContext.getTree")["contexts"][0]["context"]
        self.cmd(
            "browsingContext.setViewport", context=self.context, viewport={"width": width, "height": height}
        )
        self.cmd(
            "session.subscribe",
            events=["log.entryAdded", "network.beforeRequestSent"],
            contexts=[self.context],
        )

    def cmd(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("type") == "event":
                self.events.append(msg)
            elif msg.get("id") == self.n:
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    def goto(self, url: str) -> None:
        self.cmd("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def js(self, expression: str):
        """Evaluate an expression (a promise is awaited); its JSON-serialisable value."""
        r = self.cmd(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if r["type"] == "exception":
            raise RuntimeError(r["exceptionDetails"]["text"])
        return json.loads(r["result"]["value"]) if r["result"].get("value") is not None else None

    def wait(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.2)

    def wheel(self, x: int, y: int, delta_y: int) -> None:
        """A real wheel event at viewport point (x, y)."""
        self.cmd(
            "input.performActions",
            context=self.context,
            actions=[
                {
                    "type": "wheel",
                    "id": "wheel",
                    "actions": [{"type": "scroll", "x": x, "y": y, "deltaX": 0, "deltaY": delta_y}],
                }
            ],
        )

    def errors(self) -> list[str]:
        return [
            e["params"].get("text", "")
            for e in self.events
            if e["method"] == "log.entryAdded" and e["params"].get("level") == "error"
        ]

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"] for e in self.events if e["method"] == "network.beforeRequestSent"
        ]

    def close(self) -> None:
        try:
            self.cmd("session.end")
        except Exception:  # closing anyway
            pass
        self.ws.close()
        self.proc.kill()
        self.proc.wait()
        self.profile.cleanup()
