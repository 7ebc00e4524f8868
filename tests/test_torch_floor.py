"""The torch floor in pyproject.toml is true: every torch API the package names is in the table
below with the release that has it, and the declared floor is at least the newest of them.

The scan reads every module of ``src/plasticity_lab`` (AST, so comments and strings do not count)
and resolves names through its imports (``nn.functional.rms_norm`` -> ``torch.nn.functional.rms_norm``), including the
keyword arguments of calls (``torch.load(weights_only=)``). A new API, or a new keyword, fails
here until it is added to the table with its version, which then raises the floor if needed.
Tensor methods (``x.sum(dtype=...)``) cannot be resolved statically and are not covered.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "plasticity_lab"

# The one table (update it when the package uses another torch API). Version: a release that has
# the API, and every later one; the first release that had it where that matters for the floor.
# "1.0": present since torch 1.0 or earlier.
TORCH_API_SINCE: dict[str, str] = {
    "torch": "1.0",
    "torch.Generator": "1.0",
    "torch.default_generator": "1.0",
    "torch.default_generator.manual_seed": "1.0",
    "torch.cuda.current_device": "1.0",
    "torch.cuda.default_generators": "1.0",
    "torch.Size": "1.0",
    "torch.finfo": "1.0",
    "torch.autograd": "1.0",
    "torch.autograd.Function": "1.0",
    "torch.rand": "1.0",
    "torch.zeros_like(memory_format=)": "1.5",
    "torch.preserve_format": "1.5",
    "torch.channels_last": "1.5",  # nets/layers.py (frozen rollout conv weights)
    "torch.contiguous_format": "1.5",  # nets/layers.py (spectral norm's u, v clones, as torch's own)
    "torch.equal": "1.0",  # experiment/identity.py (runs compared bit for bit)
    "torch.cuda.mem_get_info": "1.11",
    "torch.tensor": "1.0",
    "torch.tensor(device=)": "1.0",
    "torch.tensor(dtype=)": "1.0",
    "torch.cuda.get_rng_state": "1.0",
    "torch.ones(device=)": "1.0",
    "torch.nn.init": "1.0",
    "torch.nn.init.orthogonal_": "1.0",
    "torch.nn.init.kaiming_uniform_": "1.0",
    "torch.nn.init.kaiming_uniform_(a=)": "1.0",
    "torch.nn.init.kaiming_uniform_(generator=)": "2.1",
    "torch.nn.init.uniform_": "1.0",
    "torch.nn.init.uniform_(generator=)": "2.1",
    "torch.full": "1.0",
    "torch.full(dtype=)": "1.0",
    "torch.full(device=)": "1.0",
    "torch.count_nonzero": "1.7",
    "torch.count_nonzero(dim=)": "1.7",
    "torch.nn.functional.linear": "1.0",
    "torch.nn.functional.normalize": "1.0",
    "torch.nn.functional.normalize(dim=)": "1.0",
    "torch.nn.functional.normalize(eps=)": "1.0",
    "torch.are_deterministic_algorithms_enabled": "1.8",
    "torch.argsort": "1.0",
    "torch.func.vmap": "2.0",  # nets/population.py (a population's batched forward)
    "torch.nn.Parameter(requires_grad=)": "1.0",
    "torch.Generator(device=)": "1.5",
    "torch.Tensor": "1.0",
    "torch.__version__": "1.0",
    "torch.arange": "1.0",
    "torch.arange(device=)": "1.0",
    "torch.autocast": "1.10",  # device-generic autocast (CPU bf16 included)
    "torch.autocast(enabled=)": "1.10",
    "torch.backends": "1.0",
    "torch.backends.cudnn": "1.0",
    "torch.backends.cudnn.benchmark": "1.0",
    "torch.backends.cudnn.deterministic": "1.0",
    "torch.bfloat16": "1.5",
    "torch.bool": "1.2",
    "torch.cat": "1.0",
    "torch.stack": "1.0",
    "torch.cat(dim=)": "1.0",
    "torch.stack(dim=)": "1.0",
    "torch.clone": "1.0",
    "torch.compiler": "2.1",
    "torch.compiler.set_stance": "2.6",  # interventions/optimizers.py (kron)
    "torch.cos": "1.0",
    "torch.cuda": "1.0",
    "torch.cuda.is_available": "1.0",
    "torch.version": "1.0",
    "torch.version.cuda": "1.0",
    "torch.version.hip": "1.5",
    "torch.cuda.synchronize": "1.0",
    "torch.cumsum": "1.0",
    "torch.cumsum(dim=)": "1.0",
    "torch.device": "1.0",
    "torch.distributions": "1.0",
    "torch.distributions.Independent": "1.0",
    "torch.distributions.Independent(validate_args=)": "1.0",
    "torch.distributions.Normal": "1.0",
    "torch.distributions.Normal(validate_args=)": "1.0",
    "torch.distributions.kl_divergence": "1.0",
    "torch.dtype": "1.0",
    "torch.empty": "1.0",
    "torch.empty(device=)": "1.0",
    "torch.empty(dtype=)": "1.0",
    "torch.as_tensor": "1.0",
    "torch.as_tensor(device=)": "1.0",
    "torch.as_tensor(dtype=)": "1.0",
    "torch.empty_like": "1.0",
    "torch.enable_grad": "1.0",
    "torch.exp": "1.0",
    "torch.eye": "1.0",
    "torch.eye(device=)": "1.0",
    "torch.eye(dtype=)": "1.0",
    "torch.float32": "1.0",
    "torch.float16": "1.0",
    "torch.float64": "1.0",
    "torch.from_numpy": "1.0",
    "torch.func.functional_call": "2.0",
    "torch.get_num_threads": "1.0",
    "torch.get_rng_state": "1.0",
    "torch.is_deterministic_algorithms_warn_only_enabled": "1.11",
    "torch.is_grad_enabled": "1.0",
    "torch.is_tensor": "1.0",
    "torch.isfinite": "1.2",
    "torch.linalg": "1.9",
    "torch.linalg.svdvals": "1.9",
    "torch.linalg.vector_norm": "1.9",
    "torch.linalg.vector_norm(dim=)": "1.9",
    "torch.linalg.vector_norm(dtype=)": "1.9",
    "torch.linalg.vector_norm(ord=)": "1.9",
    "torch.load": "1.0",
    "torch.load(map_location=)": "1.0",
    "torch.load(weights_only=)": "1.13",
    "torch.long": "1.0",
    "torch.manual_seed": "1.0",
    "torch.min": "1.0",
    "torch.nn": "1.0",
    "torch.nn.Conv2d": "1.0",
    "torch.nn.Conv2d(kernel_size=)": "1.0",
    "torch.nn.Conv2d(padding=)": "1.0",
    "torch.nn.Conv2d(stride=)": "1.0",
    "torch.nn.GELU": "1.4",
    "torch.nn.GroupNorm": "1.0",
    "torch.nn.Identity": "1.2",
    "torch.nn.LayerNorm": "1.0",
    "torch.nn.LeakyReLU": "1.0",
    "torch.nn.Linear": "1.0",
    "torch.nn.Linear(device=)": "1.10",  # factory keywords of modules
    "torch.nn.Linear(dtype=)": "1.9",
    "torch.nn.Mish": "1.9",
    "torch.nn.Module": "1.0",
    "torch.nn.ModuleList": "1.0",
    "torch.nn.ModuleDict": "1.0",
    "torch.nn.Parameter": "1.0",
    "torch.nn.ReLU": "1.0",
    "torch.nn.Tanh": "1.0",
    "torch.nn.functional": "1.0",
    "torch.nn.functional.conv2d": "1.0",
    "torch.nn.functional.mse_loss": "1.0",
    "torch.nn.functional.rms_norm": "2.4",  # nets/layers.py ChannelRMSNorm
    "torch.nn.functional.rms_norm(eps=)": "2.4",  # nets/layers.py ChannelRMSNorm
    "torch.nn.utils": "1.0",
    "torch.nn.utils.clip_grad_norm_": "1.0",
    "torch.nn.utils.parametrizations": "1.10",
    "torch.nn.utils.parametrizations.spectral_norm": "1.10",
    "torch.nn.utils.parametrizations._SpectralNorm": "1.10",
    "torch.nn.utils.parametrize": "1.9",
    "torch.nn.utils.parametrize.is_parametrized": "1.9",
    "torch.nn.utils.parametrize.register_parametrization": "1.9",
    "torch.no_grad": "1.0",
    "torch.nonzero": "1.0",
    "torch.ones": "1.0",
    "torch.ones(dtype=)": "1.0",
    "torch.ones_like": "1.0",
    "torch.optim": "1.0",
    "torch.optim.Adam": "1.0",
    "torch.optim.Adam(lr=)": "1.0",
    "torch.optim.AdamW": "1.2",
    "torch.optim.AdamW(lr=)": "1.2",
    "torch.optim.Optimizer": "1.0",
    "torch.pow": "1.0",
    "torch.randint": "1.0",
    "torch.randint(device=)": "1.0",
    "torch.randint(dtype=)": "1.0",
    "torch.randint(generator=)": "1.0",
    "torch.randn": "1.0",
    "torch.randn(device=)": "1.0",
    "torch.randn(dtype=)": "1.0",
    "torch.randn(generator=)": "1.0",
    "torch.random": "1.0",
    "torch.random.fork_rng": "1.0",
    "torch.random.fork_rng(devices=)": "1.0",
    "torch.randperm": "1.0",
    "torch.randperm(device=)": "1.0",
    "torch.randperm(generator=)": "1.0",
    "torch.relu": "1.0",
    "torch.save": "1.0",
    "torch.set_num_threads": "1.0",
    "torch.sign": "1.0",
    "torch.sin": "1.0",
    "torch.special": "1.9",
    "torch.special.xlogy": "1.10",
    "torch.sqrt": "1.0",
    "torch.topk": "1.0",
    "torch.uint8": "1.0",
    "torch.use_deterministic_algorithms": "1.8",
    "torch.utils.tensorboard.SummaryWriter": "1.2",
    "torch.utils.tensorboard.SummaryWriter(purge_step=)": "1.2",
    "torch.utils.tensorboard.summary.scalar": "1.2",
    "torch.var": "1.0",
    "torch.where": "1.0",
    "torch.zeros": "1.0",
    "torch.zeros(device=)": "1.0",
    "torch.zeros(dtype=)": "1.0",
    "torch.zeros_like": "1.0",
}


def version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def declared_floor() -> tuple[int, int]:
    """The X.Y of the one ``"torch>=X.Y"`` requirement of pyproject.toml's dependencies (read with a
    regex: tomllib needs Python 3.11 and the package supports 3.10)."""
    specs = re.findall(r'^\s*"torch\s*([^"]*)"', (REPO / "pyproject.toml").read_text(), flags=re.M)
    assert len(specs) == 1, f"pyproject.toml: expected one torch requirement, got {specs}"
    match = re.fullmatch(r">=\s*(\d+\.\d+)", specs[0].strip())
    assert match, f"pyproject.toml: expected a plain 'torch>=X.Y' floor, got {specs[0]!r}"
    return version(match.group(1))


def torch_names_used() -> dict[str, set[str]]:
    """Every dotted torch name (and ``name(keyword=)``) in the package -> files using it."""
    used: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        alias: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "torch":
                        alias[a.asname or "torch"] = a.name if a.asname else "torch"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
                for a in node.names:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"

        def dotted(node: ast.AST) -> str | None:
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id in alias:
                return ".".join([alias[node.id], *reversed(parts)])
            return None

        rel = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, (ast.Attribute, ast.Name)):
                names.append(dotted(node))
            if isinstance(node, ast.Call) and (func := dotted(node.func)):
                names += [f"{func}({kw.arg}=)" for kw in node.keywords if kw.arg]
            for name in filter(None, names):
                used.setdefault(name, set()).add(rel)
    return used


def resolve(name: str) -> object:
    """The object a table name refers to (submodules such as torch.utils.tensorboard imported)."""
    parts = name.split("(")[0].split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ModuleNotFoundError(name)


def test_every_torch_api_the_package_uses_is_in_the_table():
    used = torch_names_used()
    assert "torch.nn.functional.rms_norm" in used and "torch.load(weights_only=)" in used  # the scan sees through imports
    missing = {name: sorted(files) for name, files in used.items() if name not in TORCH_API_SINCE}
    assert not missing, f"add these to TORCH_API_SINCE with the torch release that has them: {missing}"
    unused = sorted(set(TORCH_API_SINCE) - set(used))
    assert not unused, f"no longer used, remove from TORCH_API_SINCE: {unused}"


def test_declared_floor_covers_the_newest_api():
    newest = max(TORCH_API_SINCE, key=lambda name: version(TORCH_API_SINCE[name]))
    assert declared_floor() >= version(TORCH_API_SINCE[newest]), (
        f"pyproject.toml asks for torch>={'.'.join(map(str, declared_floor()))} but the package uses "
        f"{newest} (torch {TORCH_API_SINCE[newest]})"
    )


def test_installed_torch_meets_the_floor_and_has_every_api():
    assert version(torch.__version__) >= declared_floor()
    for name in TORCH_API_SINCE:
        resolve(name)  # AttributeError names a typo in the table
