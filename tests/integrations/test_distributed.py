"""DDP and FSDP2 across two real CPU processes (gloo), spawned once for all the checks here.

Each rank runs `_worker`, which trains, records and writes what it found to a pickle;
the tests compare the ranks' results with each other and with an unsharded model trained
on the whole batch in the same process.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradwatch as gw

WORLD = 2
METRICS = ("grad_norm", "grad_max", "grad_zero_frac", "weight_norm", "update_norm")


class Scale(nn.Module):
    """Multiplies by a constant: a tiny one starves the layers before it far below float32's
    range for squares, so their norms take the float64 path (sharded: one collective each)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c


def net(tiny: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, 15), nn.Tanh()]
    if tiny:
        layers.append(Scale(1e-25))
    layers += [nn.Linear(15, 3), nn.Sigmoid(), nn.Linear(3, 4)]  # 15 and 3 rows: uneven shards
    return nn.Sequential(*layers)


def train(model: nn.Module, rank: int, world: int, steps: int, every: int = 1, log: Path | None = None) -> tuple[gw.Watcher, list[str]]:
    """`steps` SGD steps; each rank takes its share of the same global batch of 8."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    per = 8 // world
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gw.watch(model, every=every, optimizer=opt, log=log) as w:
            for _ in range(steps):
                x, y = torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)
                x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
                loss = (model(x) - y).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                w.step(loss=loss)
                opt.step()
    return w, [str(c.message) for c in caught if "gradwatch" in str(c.message)]


def columns(w: gw.Watcher) -> dict[str, np.ndarray]:
    return {m: w.timeline.layer_metric(m) for m in METRICS}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a rank left waiting in a collective fails within two minutes instead of hanging the suite
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_module

    from gradwatch.integrations.distributed import agree

    res: dict[str, Any] = {}
    try:
        # -- DDP: the gradients are all-reduced, so every rank records the same figures
        ddp = nn.parallel.DistributedDataParallel(net(tiny=True))  # its first layer starves
        w, res["ddp_warnings"] = train(ddp, rank, WORLD, steps=12, every=3, log=Path(out) / f"ddp{rank}.jsonl")
        d = w.diagnose()
        res["ddp_columns"] = columns(w)
        res["ddp_verdict"] = [(f.kind, f.severity, f.layers) for f in d.findings]
        res["ddp_agreed"] = agree(d).to_dict()
        res["ddp_own"] = d.to_dict()

        # -- FSDP2: every parameter and gradient is a DTensor sharded over the two ranks;
        # count the collectives gradwatch adds (it gathers with dist.all_gather only)
        gathers = []
        real = dist.all_gather

        def counting(*args: Any, **kwargs: Any) -> Any:
            gathers.append(1)
            return real(*args, **kwargs)

        for tiny in (False, True):
            model = net(tiny)
            for m in model:
                if isinstance(m, nn.Linear):
                    fully_shard(m)
            fully_shard(model)
            dist.all_gather = counting
            try:
                w, warned = train(model, rank, WORLD, steps=4, every=2)
            finally:
                dist.all_gather = real
            res[f"fsdp_columns_{tiny}"] = columns(w)
            res[f"fsdp_warnings_{tiny}"] = warned
            res[f"fsdp_gathers_{tiny}"] = len(gathers)
            res[f"fsdp_diagnosis_{tiny}"] = w.diagnose().to_dict()
            res[f"fsdp_types_{tiny}"] = [layer.type for layer in w.anatomy.layers]
            gathers.clear()

        # -- a DTensor gradient still waiting for its reduction (Partial) cannot be measured:
        # the gradient probe turns itself off with one warning and training goes on
        mesh = dist.device_mesh.init_device_mesh("cpu", (WORLD,))
        lin = distribute_module(nn.Linear(4, 2), mesh)  # replicated DTensor parameters
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gw.watch(lin, every=1, activations=False) as wp:
                for step in range(3):
                    for p in lin.parameters():
                        shape = p.to_local().shape
                        if step == 1:  # each rank holds a part of the sum
                            p.grad = DTensor.from_local(torch.full(shape, float(rank + 1)), mesh, [Partial()])
                        else:
                            p.grad = DTensor.from_local(torch.full(shape, 1.5), mesh, [Replicate()])
                    wp.step()
            caught_partial = [str(c.message) for c in caught if "gradwatch" in str(c.message)]
        res["partial_warnings"] = caught_partial
        res["partial_steps"] = list(wp.timeline.steps)
        res["partial_step_count"] = wp.step_count
        res["partial_norm"] = wp.timeline.layer_metric("grad_norm")[0].tolist()

        # -- Lightning's own DDP strategy, in these two processes (created outside Lightning)
        res.update(_lightning_ddp(rank, Path(out)))
    finally:
        with open(Path(out) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(res, f)
        dist.destroy_process_group()


def _lightning_ddp(rank: int, out: Path) -> dict[str, Any]:
    import lightning.pytorch as pl

    from gradwatch.integrations.lightning import GradwatchCallback
    from tests.integrations.test_lightning import Classifier, loader

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), NODE_RANK="0")
    torch.manual_seed(0)
    module = Classifier(nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64 if _ == 0 else 32, 32), nn.Sigmoid())], nn.Linear(32, 10)), lr=0.1)
    cb = GradwatchCallback(every=2, log=out / f"pl{rank}.jsonl", verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp", max_steps=16, callbacks=[cb], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, loader(n=1024))
    assert cb.recorder is not None and cb.diagnosis is not None
    return {
        "pl_world": trainer.world_size,
        "pl_grads": cb.recorder.timeline.layer_metric("grad_norm"),
        "pl_diagnosis": cb.diagnosis.to_dict(),
        "pl_kinds": [f.kind for f in cb.diagnosis.findings],
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict[str, Any]], Path]:
    out = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(out)), nprocs=WORLD)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)], out


def test_ddp_ranks_record_the_same_gradients_agree_and_only_rank_zero_writes_the_log(ranks) -> None:
    (r0, r1), out = ranks
    assert r0["ddp_warnings"] == r1["ddp_warnings"] == []
    for m in METRICS:
        np.testing.assert_allclose(r0["ddp_columns"][m], r1["ddp_columns"][m], rtol=1e-6)
    assert r0["ddp_verdict"] == r1["ddp_verdict"]
    assert (gw.Kind.VANISHING_GRADIENT, gw.Severity.WARNING, ["module.0"]) in r0["ddp_verdict"]
    assert r0["ddp_agreed"] == r1["ddp_agreed"] == r0["ddp_own"]  # rank zero's, on both
    assert sorted(p.name for p in out.glob("ddp*.jsonl")) == ["ddp0.jsonl"]
    run = gw.load(out / "ddp0.jsonl")
    np.testing.assert_allclose(run.timeline.layer_metric("grad_norm"), r0["ddp_columns"]["grad_norm"], rtol=1e-9)


@pytest.mark.parametrize("tiny", [False, True], ids=["tanh", "starved-below-float32"])
def test_fsdp2_per_layer_figures_equal_the_unsharded_model_s(ranks, tiny: bool) -> None:
    (r0, r1), _ = ranks
    ref, warned = train(net(tiny), 0, 1, steps=4, every=2)  # the whole batch, one process
    assert warned == [] and r0[f"fsdp_warnings_{tiny}"] == r1[f"fsdp_warnings_{tiny}"] == []
    expected = columns(ref)
    if tiny:
        assert 0 < expected["grad_norm"][0, 0] < 1e-15  # the float64 path was taken
    for r in (r0, r1):
        for m in METRICS:
            np.testing.assert_allclose(r[f"fsdp_columns_{tiny}"][m], expected[m], rtol=1e-5, err_msg=m)
    assert r0[f"fsdp_diagnosis_{tiny}"]["layers"] == r1[f"fsdp_diagnosis_{tiny}"]["layers"]
    assert r0[f"fsdp_types_{tiny}"] == ["Linear"] * 3  # seen through FSDP2's FSDPLinear class
    # one collective per record (steps 0 and 2), none on the steps in between; a starved
    # gradient's float64 norm adds one on each record: the first layer's weight and bias,
    # and the weight of the next one, which reads the scaled-down output
    assert r0[f"fsdp_gathers_{tiny}"] == (2 + 2 * 3 if tiny else 2)


def test_a_gradient_that_cannot_be_measured_stops_recording_with_one_warning(ranks) -> None:
    (r0, r1), _ = ranks
    for r in (r0, r1):
        (message,) = r["partial_warnings"]
        assert "stopped recording at step 1" in message and "Partial" in message
        assert r["partial_steps"] == [0] and r["partial_step_count"] == 3  # training went on
    # a replicated gradient of 1.5 everywhere, counted once although both ranks hold it
    assert r0["partial_norm"] == pytest.approx([1.5 * np.sqrt(4 * 2 + 2)])


def test_lightning_ddp_ranks_agree_on_a_vanishing_gradient_and_rank_zero_logs(ranks) -> None:
    (r0, r1), out = ranks
    assert r0["pl_world"] == r1["pl_world"] == WORLD
    np.testing.assert_allclose(r0["pl_grads"], r1["pl_grads"], rtol=1e-6)  # all-reduced gradients
    assert r0["pl_diagnosis"] == r1["pl_diagnosis"]
    assert gw.Kind.VANISHING_GRADIENT in r0["pl_kinds"]
    assert sorted(p.name for p in out.glob("pl*.jsonl")) == ["pl0.jsonl"]
    assert len(gw.load(out / "pl0.jsonl")) == 8
