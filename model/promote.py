"""`make promote`: the challenger becomes the champion, with the zero-downtime rollout.

    python -m model.promote            # the old champion becomes the challenger
    python -m model.promote --retire   # the old champion is retired: no challenger

Every file is first copied beside its new place under a temporary name, then renamed into place
(running workers keep the files they memory-mapped), and only then is the gunicorn master sent
SIGHUP: it verifies and loads both models before any new worker serves them, and keeps serving
the old ones if either verification fails."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

from service.core.artifacts import ArtifactPaths, read_manifest
from service.core.settings import read_environment

DEFAULT_PIDFILE = Path(".run/gunicorn.pid")


def files(paths: ArtifactPaths) -> list[Path]:
    return [paths.estimator, paths.forest, paths.manifest]


def swap(model_path: Path, challenger_path: Path, retire: bool) -> tuple[str, str | None]:
    """Moves the challenger's files to the champion's place (and the champion's to the
    challenger's, unless retire). Returns (new champion's version, new challenger's version)."""
    champion, challenger = ArtifactPaths.for_model(model_path), ArtifactPaths.for_model(challenger_path)
    promoted = read_manifest(challenger.manifest)
    if promoted is None:
        raise SystemExit(f"no challenger to promote: {challenger.manifest} does not exist")
    demoted = read_manifest(champion.manifest) if not retire else None
    moves = list(zip(files(challenger), files(champion), strict=True))
    if not retire:
        moves += list(zip(files(champion), files(challenger), strict=True))
    staged: list[tuple[Path | None, Path]] = []
    try:
        for source, target in moves:  # copies of the originals, before anything is replaced
            if source.exists():
                tmp = target.with_name(f".{target.name}.promote")
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o644)
                staged.append((tmp, target))
            else:
                staged.append((None, target))  # a file the source model does not have goes
    except BaseException:
        for tmp, _ in staged:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        if tmp is None:
            target.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    if retire:
        for path in files(challenger):
            path.unlink(missing_ok=True)
    return promoted.get("version", "?"), demoted.get("version", "?") if demoted else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = read_environment()
    parser.add_argument("--model", type=Path, default=Path(env.get("MODEL_PATH") or "model/fraud-model.joblib"))
    parser.add_argument("--challenger", type=Path, default=env.get("CHALLENGER_MODEL_PATH") or None)
    parser.add_argument("--retire", action="store_true", help="the old champion is not kept as the challenger")
    parser.add_argument("--pidfile", type=Path, default=DEFAULT_PIDFILE, help="the running gunicorn master's")
    args = parser.parse_args(argv)
    if args.challenger is None:
        parser.error("no challenger: set CHALLENGER_MODEL_PATH (environment or .env) or pass --challenger")
    pinned = [name for name in ("MODEL_SHA256", "CHALLENGER_MODEL_SHA256") if env.get(name)]
    if pinned:
        parser.error(f"{' and '.join(pinned)} pin the files being swapped: swap the pins, then `make reload`")
    try:
        pid = int(args.pidfile.read_text().strip())
    except (OSError, ValueError):
        parser.error(f"no running service ({args.pidfile} is missing): nothing to roll out to")
    champion, challenger = swap(args.model, args.challenger, args.retire)
    os.kill(pid, signal.SIGHUP)
    print(
        f"promoted {champion} to champion; "
        + (f"{challenger} is now the challenger" if challenger else "no challenger now")
        + "; rollout requested: the log says 'rolled out model …' or why it was refused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
