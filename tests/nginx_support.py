"""Debian's nginx in front of local web instances, for tests: the repository's template rendered for them and run
as a child process (never the system service) with its pid, logs and temp files under a test's tmp dir."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "kbchat.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(*, listen: str, web_addrs: list[str], max_upload_mb: int = 200) -> str:
    """The template as envsubst renders it, with one ``server`` line per address in each upstream and without
    Docker's resolver (Debian's nginx 1.22 has no ``resolve``; fixed addresses need none)."""
    text = re.sub(r"^\s*#[^\n]*\n", "", TEMPLATE.read_text(encoding="utf-8"), flags=re.M)  # comments name variables
    text = re.sub(r"^\s*resolver [^\n]*\n", "", text, flags=re.M)

    def servers(match: re.Match) -> str:
        indent, params = match.group(1), match.group(2).replace(" resolve", "")
        return "".join(f"{indent}server {addr}{params};\n" for addr in web_addrs)

    text = re.sub(r"^(\s*)server \$\{KBCHAT_WEB_ADDR\}([^;]*);\n", servers, text, flags=re.M)
    values = {"KBCHAT_NGINX_LISTEN": listen, "KBCHAT_MAX_UPLOAD_MB": str(max_upload_mb)}
    text = re.sub(r"\$\{(KBCHAT_\w+)\}", lambda m: values[m.group(1)], text)
    assert "${" not in text, "the template uses a variable the tests do not set"
    return text


def main_config(prefix: Path, site: str) -> str:
    """A whole nginx.conf around the rendered site: everything nginx writes stays under ``prefix``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # the tmp dirs are the test user's (mode 0700)
    temp = "\n".join(f"    {name}_temp_path {prefix / 'temp' / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
            f"events {{ worker_connections 512; }}\nhttp {{\n"
            # Which instance served each request (after a retry: every one tried, the last answered).
            f"    log_format kbchat '$remote_addr \"$request\" $status upstream=$upstream_addr';\n"
            f"    access_log {prefix / 'access.log'} kbchat;\n{temp}\n"
            f"{site}\n}}\n")


@dataclass
class Nginx:
    process: subprocess.Popen
    url: str
    prefix: Path

    def log(self) -> str:
        parts = []
        for name in ("error.log", "access.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(f"--- nginx {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def write_config(prefix: Path, web_addrs: list[str], port: int, max_upload_mb: int = 200) -> Path:
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / name).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, render(listen=f"127.0.0.1:{port}", web_addrs=web_addrs,
                                               max_upload_mb=max_upload_mb)))
    return conf


def check_config(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-q", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True,
                          timeout=30)


def start(prefix: Path, web_addrs: list[str], max_upload_mb: int = 200) -> Nginx:
    """nginx (master and one worker) in the foreground as a child in its own process group; returns once it
    answers on its port."""
    port = free_port()
    conf = write_config(prefix, web_addrs, port, max_upload_mb)
    checked = check_config(conf, prefix)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t refused the rendered config:\n{checked.stderr}\n{conf.read_text()}")
    log = open(prefix / "stderr.log", "ab")
    process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    running = Nginx(process, f"http://127.0.0.1:{port}", prefix)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited {process.returncode}:\n{running.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return running
        except OSError:
            time.sleep(0.1)
    stop(running)
    raise RuntimeError(f"nginx did not listen on {port}:\n{running.log()}")


def stop(nginx: Nginx) -> None:
    """SIGQUIT (graceful) to the master; its workers go with it. SIGKILL the group if it hangs; always reap."""
    if nginx.process.poll() is None:
        nginx.process.send_signal(signal.SIGQUIT)
        try:
            nginx.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(nginx.process.pid, signal.SIGKILL)
            nginx.process.wait()
    try:  # a worker left behind (the master was killed): it is in the group
        os.killpg(nginx.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def get(url: str, timeout: float = 10, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
