"""podman for `make container-test`: the base images (official ones where a registry answers, local
stand-ins built from Debian's packages where none does), the project's images built stage by stage
with their times and sizes, and the small commands the container tests share.

`python -m tests.podman` builds everything twice (the first build is cold on a fresh machine, the
second shows the cache) and prints a table; the tests then use the same images. With
CONTAINER_NO_CACHE=1 the first build ignores the layer cache (a cold build on any machine); the
download caches stay."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PODMAN_DIR = ROOT / "deploy" / "podman"
CONTAINERS_CONF = PODMAN_DIR / "containers.conf"
STANDIN = "localhost/fraud-scoring-standin"
DEBIAN_STANDIN = f"{STANDIN}/debian:bookworm"
API_IMAGE = "localhost/fraud-scoring-api:container-test"
NGINX_IMAGE = "localhost/fraud-scoring-nginx:container-test"  # nginx/Dockerfile: the template baked in (ECS)
EXPORTERS_DOCKERFILE = ROOT / "nginx" / "exporters.Dockerfile"
EXPORTERS_IMAGE = "localhost/fraud-scoring-nginx-exporters:container-test"  # mtail, prometheus-nginx-exporter
STAGES = ("test", "build", "production")  # every stage of the Dockerfile, in build order
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fraud-scoring-containers"


def env() -> dict[str, str]:
    """The host-specific podman settings come from the project's file, never from /etc."""
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}


def podman(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {shlex.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def official_images() -> dict[str, str]:
    """The images the project's files name: the Dockerfile's PYTHON_IMAGE default and the compose
    file's nginx default, so that there is one place for each."""
    python = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    nginx = re.search(r"image: \$\{NGINX_IMAGE:-([^}]+)\}", (ROOT / "docker-compose.yml").read_text())
    debian = re.search(r"^ARG DEBIAN_IMAGE=(\S+)", EXPORTERS_DOCKERFILE.read_text(), re.M)
    assert python and nginx and debian, "the Dockerfiles' or the compose file's base image default is missing"
    return {"PYTHON_IMAGE": python.group(1), "NGINX_IMAGE": nginx.group(1), "DEBIAN_IMAGE": debian.group(1)}


def pullable(image: str) -> bool:
    return exists(image) or podman("pull", "-q", image, check=False, timeout=600).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt already uses (deb822 .sources or the one-line format)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text()
        for pattern in (r"^URIs:\s*(\S+/debian)\s*$", r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b"):
            if found := re.search(pattern, text, re.M):
                return found.group(1)
    return "http://deb.debian.org/debian"


def build_debian_standin() -> None:
    """A minimal bookworm root (debootstrap), without apt's caches, imported as an image."""
    with tempfile.TemporaryDirectory(prefix="fraud-scoring-rootfs-") as root:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", root, debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in Path(root, leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        podman(
            "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "-", DEBIAN_STANDIN, stdin=tar.stdout, timeout=600,
        )  # fmt: skip
        tar.wait()


def build_standin(name: str, tag: str) -> str:
    image = f"{STANDIN}/{tag}"
    if not exists(image):
        if not exists(DEBIAN_STANDIN):
            build_debian_standin()
        podman(
            "build", "--format", "docker", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_STANDIN}",
            "-f", str(PODMAN_DIR / f"{name}.Containerfile"), "-t", image, str(PODMAN_DIR), timeout=900,
        )  # fmt: skip
    return image


def base_images() -> dict[str, str]:
    """Official images where they can be pulled; otherwise the stand-ins (built once, then reused)."""
    official = official_images()
    images = {}
    for arg, name, tag in (
        ("PYTHON_IMAGE", "python", "python:3.11-slim-bookworm"),
        ("NGINX_IMAGE", "nginx", "nginx-unprivileged:1.27-debian"),
    ):
        images[arg] = official[arg] if pullable(official[arg]) else build_standin(name, tag)
    if pullable(official["DEBIAN_IMAGE"]):
        images["DEBIAN_IMAGE"] = official["DEBIAN_IMAGE"]
    else:
        if not exists(DEBIAN_STANDIN):
            build_debian_standin()
        images["DEBIAN_IMAGE"] = DEBIAN_STANDIN
    return images


def pip_config_paths() -> list[Path]:
    """The host's pip configuration files and every local path they name (constraints, CA bundle,
    find-links, file:// indexes): mounted read-only so that pip in the build resolves as the host does."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True, timeout=60
    ).stdout
    paths = {Path(p) for p in re.findall(r"^\s*(/\S+), exists: True", listed, re.M)}
    for value in re.findall(r"=\s*'?([^'\n]+)'?$", listed, re.M) + re.findall(r":\s*(\S+)$", listed, re.M):
        for word in value.split():
            path = Path(word.removeprefix("file://"))
            if path.name == "simple":  # a local index: its pages link to files beside simple/
                path = path.parent
            if path.is_absolute() and path.exists():
                paths.add(path)
    return sorted(paths)


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MOUNTED_CA_BUNDLE = "/run/host-ca-certificates.crt"  # outside /etc/ssl: the image's packages write there


def build_volumes() -> list[str]:
    """Read-only: the host's CA bundle (for pip, as PIP_CERT: see build_stage) and pip configuration.
    Read-write: pip's and apt's download caches, so that a rebuild after a change does not download
    the test stage's packages again. /etc/ssl itself stays the image's: installing Java writes its
    keystore under /etc/ssl/certs."""
    paths = sorted(p for p in pip_config_paths() if not p.is_relative_to("/etc/ssl"))
    outermost = [p for p in paths if p.exists() and not any(p != q and p.is_relative_to(q) for q in paths)]
    volumes = [f"-v={p}:{p}:ro" for p in outermost]
    if HOST_CA_BUNDLE.exists():
        volumes.append(f"-v={HOST_CA_BUNDLE}:{MOUNTED_CA_BUNDLE}:ro")
    for name, target in (("pip", "/root/.cache/pip"), ("apt", "/var/cache/apt/archives")):
        (CACHE / name).mkdir(parents=True, exist_ok=True)
        volumes.append(f"-v={CACHE / name}:{target}")
    return volumes


def build_stage(stage: str, images: dict[str, str], tag: str | None = None, no_cache: bool = False) -> float:
    start = time.monotonic()
    args = ["build", "--format", "docker", "--network", "host", "--target", stage, *build_volumes()]
    if no_cache:
        args.append("--no-cache")
    args += ["--build-arg", f"PYTHON_IMAGE={images['PYTHON_IMAGE']}", "-f", str(ROOT / "Dockerfile")]
    if HOST_CA_BUNDLE.exists():
        args += ["--build-arg", f"PIP_CERT={MOUNTED_CA_BUNDLE}"]
    args += ["-t", tag or f"localhost/fraud-scoring-{stage}:container-test", str(ROOT)]
    result = podman(*args, check=False, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"building stage {stage} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - start


def build_nginx(images: dict[str, str]) -> float:
    start = time.monotonic()
    podman(
        "build", "--format", "docker", "--build-arg", f"NGINX_IMAGE={images['NGINX_IMAGE']}",
        "-t", NGINX_IMAGE, str(ROOT / "nginx"), timeout=600,
    )  # fmt: skip
    return time.monotonic() - start


def build_exporters(images: dict[str, str]) -> float:
    """nginx/exporters.Dockerfile: Debian's mtail and prometheus-nginx-exporter (apt over the network)."""
    start = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={images['DEBIAN_IMAGE']}",
        "-f", str(EXPORTERS_DOCKERFILE), "-t", EXPORTERS_IMAGE, str(ROOT / "nginx"), timeout=900,
    )  # fmt: skip
    return time.monotonic() - start


def image_id(image: str) -> str | None:
    found = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def build_all(images: dict[str, str], no_cache: bool = False) -> dict[str, float]:
    """Every stage, then nginx/Dockerfile and nginx/exporters.Dockerfile. With no_cache, the test and build stages run every step
    again; podman does not reuse the layers of a --no-cache build, so the production stage's time
    then includes both of them once more."""
    tags = [f"localhost/fraud-scoring-{stage}:container-test" for stage in STAGES]
    tags += [API_IMAGE, NGINX_IMAGE, EXPORTERS_IMAGE]
    before = {image_id(tag) for tag in tags} - {None}
    times = {stage: build_stage(stage, images, no_cache=no_cache and stage != "production") for stage in STAGES}
    podman("tag", "localhost/fraud-scoring-production:container-test", API_IMAGE)
    times["nginx/Dockerfile"] = build_nginx(images)
    times["nginx/exporters.Dockerfile"] = build_exporters(images)
    # The images these tags named before, if no tag names them now: this project's, superseded
    # (kept if a container still uses one). Without this every changed build leaves gigabytes.
    for superseded in before - {image_id(tag) for tag in tags}:
        podman("rmi", superseded, check=False)
    return times


def ensure_images() -> dict[str, str]:
    """The base images, and the project's images built once (the container tests' fixtures): every
    stage when the api image is missing, else only the exporters' image if that one is."""
    images = base_images()
    if not exists(API_IMAGE):
        build_all(images)
    elif not exists(EXPORTERS_IMAGE):
        build_exporters(images)
    return images


def size_mb(image: str) -> float:
    return json.loads(podman("image", "inspect", image).stdout)[0]["Size"] / 1e6


def layers(image: str) -> list[tuple[float, str]]:
    """(MB, the instruction that made it) for each layer, from `podman history`."""
    rows = json.loads(podman("history", "--format", "json", image).stdout)
    return [(row["size"] / 1e6, " ".join(row.get("CreatedBy", row.get("createdBy", "")).split())[:110]) for row in rows]


def main() -> int:
    if not shutil.which("podman"):
        print("podman is not installed: `make container-test` installs it", file=sys.stderr)
        return 1
    start = time.monotonic()
    images = base_images()
    print(f"base images: {images} ({time.monotonic() - start:.0f} s, stand-ins are built once and reused)")
    no_cache = os.environ.get("CONTAINER_NO_CACHE") == "1"
    cold = build_all(images, no_cache=no_cache)
    cached = build_all(images)
    first = "without the layer cache" if no_cache else "cold on a fresh machine, else with this one's layer cache"
    print(f"{'stage':<18}{'first build s':>15}{'cached s':>10}   (the first build: {first})")
    for stage in cold:
        print(f"{stage:<18}{cold[stage]:>15.1f}{cached[stage]:>10.1f}")
    print(
        f"image sizes: production {size_mb(API_IMAGE):.0f} MB, test stage {size_mb('localhost/fraud-scoring-test:container-test'):.0f} MB, nginx (nginx/Dockerfile) {size_mb(NGINX_IMAGE):.0f} MB, exporters {size_mb(EXPORTERS_IMAGE):.0f} MB"
    )
    print("production image layers (MB, instruction):")
    for mb, created_by in layers(API_IMAGE):
        print(f"  {mb:8.1f}  {created_by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
