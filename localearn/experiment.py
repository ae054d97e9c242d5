"""Run one experiment into one directory, resumably.

A run directory holds:

* ``config.yaml``: the resolved config, enough to repeat the run;
* ``metrics.jsonl``: one JSON object a line (steps and epochs, per block);
* ``init.pt``: the network at initialisation (the random twin's weights);
* ``checkpoint.pt`` (and ``reference.pt``): network, rule state, optimizer
  state, schedule position and random state after the last finished epoch,
  written atomically;
* ``results.json``: probe accuracies, timings and, with a reference, the
  CKA similarity of every block to the reference's blocks (schema in
  ``docs/results_schema.md``);
* ``report.md`` with PNG plots.

A run that stops (interrupted, or a diverging loss) keeps its last good
checkpoint; ``localearn run --resume DIR`` continues it and, under a fixed
seed and thread count, ends with the same results as a run that never
stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from localearn.analysis import cka_table
from localearn.config import to_plain
from localearn.data import Dataset, load_dataset
from localearn.errors import ConfigError
from localearn.network import Network
from localearn.probe import ProbeConfig, balanced_subset, probe_accuracy
from localearn.schedulers import Position, SchedulerConfig, Trainer

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "localearn.results/1"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write text to a temporary file, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsLog:
    """Append-only JSON-lines metrics, truncated back on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()

    def size(self) -> int:
        """Current size in bytes (stored in checkpoints)."""
        return self.path.stat().st_size

    def truncate(self, size: int) -> None:
        """Drop lines written after a checkpoint was taken."""
        with open(self.path, "r+b") as fh:
            fh.truncate(size)

    def write(self, record: dict) -> None:
        """Append one record."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def read(self) -> list[dict]:
        """Every record so far."""
        with open(self.path) as fh:
            return [json.loads(line) for line in fh if line.strip()]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}' requested but torch sees no CUDA device; use "
            "device=cpu or device=auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device '{name}'; use cpu, cuda, cuda:N or auto"
        ) from None


def build_network(cfg: DictConfig, data: Dataset) -> Network:
    """Seed and build the network of a config for a data set."""
    seed_everything(int(cfg.seed))
    net_cfg = to_plain(cfg.network)
    return Network.from_config(net_cfg, data.input_shape, data.n_classes)


def scheduler_config(cfg: DictConfig, mode: str | None = None) -> SchedulerConfig:
    """The scheduler section as a dataclass, optionally with another mode."""
    sched = SchedulerConfig(**to_plain(cfg.scheduler))
    if mode is not None:
        sched.mode = mode
    return sched


class Experiment:
    """One run of one config in one directory.

    Args:
        cfg: the merged config.
        run_dir: where everything is written.
        progress: show progress bars.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, progress: bool = False) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.progress = progress
        self.timing: dict[str, float] = {}

    # -- entry points ---------------------------------------------------------

    @staticmethod
    def preflight(cfg: DictConfig) -> None:
        """Check everything that can be checked before any work is done.

        Data set, network, rules, scheduler and evaluation settings are
        validated here, so a bad config fails before its run directory exists.
        """
        from localearn.schedulers import check_network_schedule, check_scheduler

        data = load_dataset(
            cfg.data.name,
            root=cfg.data.root,
            seed=int(cfg.seed),
            **to_plain(cfg.data.options),
        )
        net = build_network(cfg, data)
        check_scheduler(scheduler_config(cfg))
        check_network_schedule(net, str(cfg.scheduler.mode))
        if cfg.evaluate.reference and cfg.scheduler.mode != "reference":
            check_network_schedule(net, "reference")
        resolve_device(str(cfg.device))
        if int(cfg.evaluate.pool) < 1:
            raise ConfigError(
                f"evaluate.pool must be >= 1 (grid cells per axis the probe features "
                f"are pooled to), got {cfg.evaluate.pool}"
            )
        for b in cfg.evaluate.budgets:
            if b == "all":
                continue
            if not isinstance(b, int) or b < 1:
                raise ConfigError(
                    f"evaluate.budgets entries must be a positive number of labels "
                    f"per class or 'all', got {b!r}"
                )
            balanced_subset(data.y_train, b, int(cfg.seed))

    @classmethod
    def create(
        cls, cfg: DictConfig, run_dir: Path, progress: bool = False
    ) -> Experiment:
        """Start a new run; refuses a directory that already holds one."""
        run_dir = Path(run_dir)
        cls.preflight(cfg)
        if (run_dir / "config.yaml").exists():
            raise ConfigError(
                f"run directory '{run_dir}' already holds a run; resume it with "
                f"`localearn run --resume {run_dir}`, or choose another with "
                "--out DIR or output.dir=..."
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / "config.yaml")
        return cls(cfg, run_dir, progress)

    @classmethod
    def resume(cls, run_dir: Path, progress: bool = False) -> Experiment:
        """Reopen a run directory written by :meth:`create`."""
        run_dir = Path(run_dir)
        path = run_dir / "config.yaml"
        if not path.exists():
            raise ConfigError(
                f"cannot resume '{run_dir}': it has no config.yaml, so it is not a "
                "localearn run directory"
            )
        return cls(OmegaConf.load(path), run_dir, progress)

    def run(self) -> dict[str, Any]:
        """Train (or finish training), evaluate and write the results."""
        done = self.dir / "results.json"
        if done.exists():
            log.info("%s is finished; its results are kept as they are", self.dir)
            return json.loads(done.read_text())
        start = time.perf_counter()
        cfg = self.cfg
        if int(cfg.threads) > 0:
            torch.set_num_threads(int(cfg.threads))
        data = load_dataset(
            cfg.data.name,
            root=cfg.data.root,
            seed=int(cfg.seed),
            **to_plain(cfg.data.options),
        )
        self.metrics = MetricsLog(self.dir / "metrics.jsonl")
        self.device = resolve_device(str(cfg.device))
        data = data.to(self.device)
        net = build_network(cfg, data)
        init_path = self.dir / "init.pt"
        if not init_path.exists():
            atomic_save(net.state_dict(), init_path)
        init_state = torch.load(init_path, weights_only=True)
        net.load_state_dict(init_state)
        net.to(self.device)

        models = {"trained": net}
        t0 = time.perf_counter()
        self._train(net, data, "trained", "checkpoint.pt", scheduler_config(cfg))
        self.timing["train_s"] = time.perf_counter() - t0
        if cfg.evaluate.reference and cfg.scheduler.mode != "reference":
            ref = build_network(cfg, data)
            ref.load_state_dict(init_state)
            ref.to(self.device)
            t0 = time.perf_counter()
            self._train(
                ref,
                data,
                "reference",
                "reference.pt",
                scheduler_config(cfg, "reference"),
            )
            self.timing["reference_s"] = time.perf_counter() - t0
            models["reference"] = ref
        if cfg.evaluate.random_twin:
            twin = build_network(cfg, data)
            twin.load_state_dict(init_state)
            twin.to(self.device)
            models["random"] = twin

        t0 = time.perf_counter()
        results = self.evaluate(models, data)
        self.timing["probe_s"] = time.perf_counter() - t0
        self.timing["total_s"] = time.perf_counter() - start
        results["timing"] = dict(self.timing)
        atomic_write_text(json.dumps(results, indent=2), self.dir / "results.json")
        from localearn.report import write_report

        write_report(self.dir, results, models, self.metrics.read())
        return results

    # -- training -------------------------------------------------------------

    def _train(
        self,
        net: Network,
        data: Dataset,
        model: str,
        ckpt_name: str,
        sched: SchedulerConfig,
    ) -> None:
        ckpt_path = self.dir / ckpt_name
        start_mark = self.dir / f"{ckpt_name}.start"
        pos = Position()
        if not ckpt_path.exists() and start_mark.exists():
            # interrupted before the first epoch finished: start this model over
            self.metrics.truncate(int(start_mark.read_text()))
        if not ckpt_path.exists():
            atomic_write_text(str(self.metrics.size()), start_mark)
        if ckpt_path.exists():
            pos = self._restore(net, ckpt_path)
            if pos.done:
                log.info("%s: training already finished, loaded %s", model, ckpt_name)
                return
            log.info("%s: resuming at stage %d epoch %d", model, pos.stage, pos.epoch)
        else:
            seed_everything(int(self.cfg.seed) + 1)

        def on_epoch(p: Position) -> None:
            if self.cfg.output.checkpoint:
                self._checkpoint(net, p, ckpt_path)

        def log_step(record: dict) -> None:
            self.metrics.write({"model": model, **record})

        trainer = Trainer(
            net,
            sched,
            data.x_train,
            data.y_train,
            seed=int(self.cfg.seed),
            log_step=log_step,
            on_epoch=on_epoch,
            progress=self.progress,
            cache_dir=self.dir / "cache",
            model=model if model != "trained" else "",
        )
        try:
            pos = trainer.run(pos)
        except KeyboardInterrupt:
            if ckpt_path.exists():
                log.warning(
                    "interrupted; the last finished epoch is saved in %s; continue "
                    "with `localearn run --resume %s`",
                    ckpt_path,
                    self.dir,
                )
            else:
                log.warning(
                    "interrupted before the first epoch of %s finished; `localearn "
                    "run --resume %s` starts that model over",
                    model,
                    self.dir,
                )
            raise
        self._checkpoint(net, pos, ckpt_path)
        start_mark.unlink(missing_ok=True)  # only an unfinished model needs it

    def _checkpoint(self, net: Network, pos: Position, path: Path) -> None:
        state = {
            "network": net.state_dict(),
            "optimizers": {
                n: b.optimizer.state_dict()
                for n, b in net.blocks.items()
                if b.optimizer is not None
            },
            "position": {
                "stage": pos.stage,
                "epoch": pos.epoch,
                "step": pos.step,
                "done": pos.done,
                "history": pos.history,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "metrics_size": self.metrics.size(),
        }
        atomic_save(state, path)

    def _restore(self, net: Network, path: Path) -> Position:
        try:
            state = torch.load(path, weights_only=False)
        except Exception as err:
            raise ConfigError(
                f"checkpoint '{path}' cannot be read ({err}); delete it to restart "
                "that model's training from scratch"
            ) from None
        net.load_state_dict(state["network"])
        for name, opt_state in state["optimizers"].items():
            net.blocks[name].optimizer.load_state_dict(opt_state)
        pos = Position(**state["position"])
        if not pos.done:
            # continue exactly where the checkpoint was taken
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            self.metrics.truncate(state["metrics_size"])
        return pos

    # -- evaluation -----------------------------------------------------------

    def features(
        self, net: Network, x: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Probe features of every block, and the last block's raw output."""
        net.eval()
        pool = int(self.cfg.evaluate.pool)
        chunks: dict[str, list[torch.Tensor]] = {n: [] for n in net.order}
        last = []
        with torch.no_grad():
            for batch in x.split(int(self.cfg.evaluate.batch_size)):
                outputs = net(batch)
                for name, f in net.features(outputs, pool).items():
                    chunks[name].append(f.cpu())
                top = net.blocks[net.order[-1]].rule
                y = outputs[net.order[-1]]
                last.append((top.logits(y) if hasattr(top, "logits") else y).cpu())
        return {n: torch.cat(v) for n, v in chunks.items()}, torch.cat(last).flatten(1)

    def evaluate(self, models: dict[str, Network], data: Dataset) -> dict[str, Any]:
        """Probe every block of every model at every label budget."""
        cfg = self.cfg
        labels_train, labels_test = data.y_train.cpu(), data.y_test.cpu()
        probe_cfg = ProbeConfig(**to_plain(cfg.evaluate.probe))
        budgets = []
        for b in cfg.evaluate.budgets:
            if b == "all":
                budgets.append(("all", torch.arange(len(data.y_train))))
            elif isinstance(b, int) and b > 0:
                idx = balanced_subset(labels_train, b, int(cfg.seed))
                budgets.append((str(b), idx))
            else:
                raise ConfigError(
                    f"evaluate.budgets entries must be a positive number of labels "
                    f"per class or 'all', got {b!r}"
                )
        rows = []
        readout = {}
        test_features: dict[str, dict[str, torch.Tensor]] = {}
        for model, net in models.items():
            f_train, _ = self.features(net, data.x_train)
            f_test, last = self.features(net, data.x_test)
            test_features[model] = f_test
            for block in net.order:
                for budget, idx in budgets:
                    acc = probe_accuracy(
                        f_train[block][idx],
                        labels_train[idx],
                        f_test[block],
                        labels_test,
                        data.n_classes,
                        probe_cfg,
                    )
                    rows.append(
                        {
                            "model": model,
                            "block": block,
                            "budget": budget,
                            "n_labels": len(idx),
                            "accuracy": acc,
                            "n_test": len(data.y_test),
                        }
                    )
                    log.info("probe %s %s %s: %.4f", model, block, budget, acc)
            if self._has_readout(net, data) and model != "random":
                pred = last.argmax(1)
                readout[model] = float((pred == labels_test).double().mean())
        return {
            "schema": RESULTS_SCHEMA,
            "name": cfg.name,
            "seed": int(cfg.seed),
            "scheduler": cfg.scheduler.mode,
            "data": {
                "name": data.name,
                "n_train": len(data.y_train),
                "n_test": len(data.y_test),
                "n_classes": data.n_classes,
            },
            "blocks": [
                {
                    "name": n,
                    "rule": b.rule.name,
                    "kind": b.rule.kind,
                    "parameters": sum(p.numel() for p in b.parameters()),
                    "out_shape": list(models["trained"].shapes[n]),
                }
                for n, b in models["trained"].blocks.items()
            ],
            "probe": rows,
            "readout": readout,
            "final_loss": self._final_losses(),
            "epochs": self._epochs(models["trained"], "reference" in models),
            **self._cka(test_features),
        }

    def _cka(self, features: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Linear CKA of each model's blocks against the reference's blocks.

        Uses the pooled test-set features the probe already computed, so the
        networks run once. Empty when there is no reference or
        ``evaluate.cka`` is off.
        """
        if not self.cfg.evaluate.get("cka", True) or "reference" not in features:
            return {}
        out = {}
        for model in ("trained", "random"):
            if model in features:
                out[f"{model}_vs_reference"] = cka_table(
                    features[model], features["reference"]
                )
                log.info("CKA %s vs reference computed", model)
        return {"cka": out}

    def _epochs(self, net: Network, with_reference: bool) -> dict[str, int]:
        """Passes over the training set per model (every stage counted)."""
        sched = scheduler_config(self.cfg)
        stages = len(net.order) if sched.mode in ("sequential", "cached") else 1
        out = {"trained": sched.epochs * stages}
        if with_reference:
            out["reference"] = sched.epochs
        return out

    @staticmethod
    def _has_readout(net: Network, data: Dataset) -> bool:
        """Whether the last block classifies: its own head, or one unit a class."""
        rule = net.blocks[net.order[-1]].rule
        if not rule.needs_labels_now():
            return False
        return hasattr(rule, "logits") or net.shapes[net.order[-1]] == (data.n_classes,)

    def _final_losses(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for rec in self.metrics.read():
            if rec.get("event") == "epoch":
                out.setdefault(rec["model"], {}).update(rec["loss"])
        return out
