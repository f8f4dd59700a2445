"""Real nginx for the tests: find (or install Debian's package), fill the deployment includes, run.

The repo's `ops/nginx/{dev,prod}.conf` and the includes shared by every deployment (`SHARED`, beside
them) are copied byte for byte into a temporary conf directory; only the `booking/*.conf` includes they
name (upstreams, listen, TLS) are written here, so the tests check the same text docker compose mounts
(compose's own includes are in ops/nginx/compose/).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "ops" / "nginx"
INCLUDES = ("upstreams.conf", "listen.conf", "tls.conf", "internal.conf")
# Included by name from dev.conf / prod.conf, identical in every deployment (compose mounts them too).
SHARED = ("proxy_headers.conf",)


@functools.cache
def nginx_binary() -> tuple[str | None, str]:
    """(path to nginx, "") or (None, why it is unavailable). Installs Debian's package when missing."""
    found = _find()
    if found:
        return found, ""
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "nginx is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return None, "nginx is not installed and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log: list[str] = []
    try:
        update = subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=120)
        log.append(update.stderr[-500:])
        for package in ("nginx-light", "nginx"):
            install = subprocess.run(
                [apt, "install", "-y", "-q", "--no-install-recommends", package],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            log.append(install.stderr[-500:])
            path = _find()
            if install.returncode == 0 and path:
                return path, ""
    except subprocess.TimeoutExpired as exc:
        log.append(f"{' '.join(map(str, exc.cmd))} timed out")
    detail = " | ".join(s.strip() for s in log if s.strip())
    return None, f"nginx could not be installed with apt-get: {detail}"


def _find() -> str | None:
    # apt puts nginx in /usr/sbin, which a non-login PATH may lack.
    candidates = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
    return shutil.which("nginx") or next((p for p in candidates if os.access(p, os.X_OK)), None)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for localhost, made by `openssl req`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def write_config(
    prefix: Path,
    name: str,
    *,
    web: list[str],
    jobs: list[str],
    listen: str,
    tls: tuple[str, Path, Path] | None = None,
    internal: str | None = None,
) -> Path:
    """`ops/nginx/<name>.conf` under `prefix/conf/nginx.conf`, with its includes filled in.

    `web` / `jobs` are `host:port` servers; `listen` is the plain-HTTP address; `tls` is
    (address, certificate, key) for the prod config's HTTPS server; `internal` is the address of the
    prod config's internal server (/metrics).
    """
    conf_dir = prefix / "conf"
    (conf_dir / "booking").mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    conf = conf_dir / "nginx.conf"
    shutil.copyfile(NGINX_DIR / f"{name}.conf", conf)
    for shared in SHARED:
        shutil.copyfile(NGINX_DIR / shared, conf_dir / shared)

    def upstream(label: str, servers: list[str]) -> str:
        lines = "".join(f"    server {server};\n" for server in servers)
        return f"upstream {label} {{\n{lines}}}\n"

    (conf_dir / "booking" / "upstreams.conf").write_text(
        upstream("booking_web", web) + upstream("booking_jobs", jobs), encoding="utf-8"
    )
    (conf_dir / "booking" / "listen.conf").write_text(f"listen {listen};\n", encoding="utf-8")
    if tls is not None:
        address, cert, key = tls
        (conf_dir / "booking" / "tls.conf").write_text(
            f"listen {address} ssl http2;\nssl_certificate {cert};\nssl_certificate_key {key};\n",
            encoding="utf-8",
        )
    if internal is not None:
        (conf_dir / "booking" / "internal.conf").write_text(f"listen {internal};\n", encoding="utf-8")
    return conf


def command(nginx: str, prefix: Path, conf: Path, *, foreground: bool = False) -> list[str]:
    """nginx with everything it writes under `prefix` (pid, temp files, the start-up error log)."""
    directives = f"pid {prefix / 'nginx.pid'};"
    if foreground:
        directives += " daemon off;"
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", directives]
