"""What a checkpoint must hold before mrrn uses it: its structure, and tensors of the shapes the run
record says. A checkpoint is plain data read with ``weights_only`` (``rundir.py``); this module checks
that data, so a damaged or foreign checkpoint, or a run record edited by hand, is one line and never
a traceback or a model of any size the record asks for.
"""
from __future__ import annotations

import numbers

import torch

from pipeline.config import TrainConfig
from pipeline.train.heads import build_model


def expected_shapes(cfg: TrainConfig, width: int, classes: int) -> dict[str, tuple[int, ...]]:
    """The model's state, name -> shape, as the settings say, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = build_model(cfg, width, classes)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def model_problem(state, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why ``state`` (a checkpoint's whole content) cannot fill a model of ``shapes``; None when it can."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        return "no model state in it"
    model = state["model"]
    missing = [name for name in shapes if name not in model]
    extra = [name for name in model if name not in shapes]
    if missing or extra:
        name, what = (missing[0], "missing") if missing else (extra[0], "not in the run's model")
        return f"{len(missing) + len(extra)} tensor(s) missing or unexpected, first {name!r}: {what}"
    for name, shape in shapes.items():
        tensor = model[name]
        if not isinstance(tensor, torch.Tensor):
            return f"{name!r} is not a tensor"
        if tuple(tensor.shape) != shape:
            return f"{name!r} has shape {tuple(tensor.shape)}, the run record's settings give {shape}"
    return None


def resume_problem(state, model: torch.nn.Module) -> str | None:
    """Why ``state`` cannot resume ``model`` (its weights, the optimiser's state, the epoch, the random
    generator's state); None when it can."""
    problem = model_problem(state, {name: tuple(t.shape) for name, t in model.state_dict().items()})
    if problem:
        return problem
    epoch, best, rng = state.get("epoch"), state.get("best_video_top1"), state.get("rng")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"epoch {epoch!r} is not an epoch number"
    if not isinstance(best, numbers.Real):
        return f"best_video_top1 {best!r} is not a number"
    cpu = rng.get("cpu") if isinstance(rng, dict) else None
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        return "no random generator state in it"
    return _optimizer_problem(state.get("optimizer"), model)


def _optimizer_problem(opt, model: torch.nn.Module) -> str | None:
    """Why ``opt`` is not the Adam state of ``model``'s parameters; None when it is."""
    params = list(model.parameters())
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "no optimiser state in it"
    groups = opt["param_groups"]
    listed = [i for g in groups if isinstance(g, dict) for i in g.get("params", ())]
    if len(groups) != 1 or sorted(listed) != list(range(len(params))):
        return f"its optimiser state is of {len(listed)} parameters, the model has {len(params)}"
    for index, slot in opt["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(slot, dict):
            return "its optimiser state is damaged"
        for name in ("exp_avg", "exp_avg_sq"):
            value = slot.get(name)
            if not isinstance(value, torch.Tensor) or value.shape != params[index].shape:
                return f"its optimiser's {name} of parameter {index} does not fit the model"
    return None
