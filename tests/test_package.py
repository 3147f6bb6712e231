"""The package as a whole: what the wheel carries, where configs are found, and how its modules depend on each other.

The wheel itself is built, installed into a fresh venv and run from an empty directory by ``.ci/wheel_smoke``
(``make wheel-smoke``, run in CI); these tests check the pieces that make that work, in the default tier.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from cimexp.run.config import compose, config_dir, shipped_file

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "cimexp"
ENTRY_POINTS = ("cimexp.train", "cimexp.evaluate", "cimexp.cost", "cimexp.post_training", "cimexp.report.cli")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_wheel_lists_every_subpackage_and_the_config_packages() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(SRC.parent).parts) for p in SRC.rglob("__init__.py")}
    assert set(setuptools["packages"]) == code | {"cimexp.conf", "cimexp.experiments", "cimexp.checkpoints"}
    assert setuptools["package-dir"] == {
        "": "src",
        "cimexp.conf": "conf",
        "cimexp.experiments": "experiments",
        "cimexp.checkpoints": "checkpoints",
    }


def test_the_package_data_globs_cover_every_config_and_sweep() -> None:
    """Read as setuptools reads them (a ``*`` spans one folder): ``conf/hydra/launcher/*.yaml`` once fell outside
    ``*/*.yaml``, so an installed wheel had no launcher presets."""
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package, folder in (("cimexp.conf", "conf"), ("cimexp.experiments", "experiments")):
        files = {p.relative_to(REPO / folder) for p in (REPO / folder).rglob("*.yaml")}
        covered = {p.relative_to(REPO / folder) for glob in data[package] for p in (REPO / folder).glob(glob)}
        if package == "cimexp.experiments":
            files = {f for f in files if f.parts[0] == "sweep"}  # results/ is not part of the package
        assert files and files == covered, files - covered
    assert (REPO / "checkpoints" / "resnet20_cifar10_float.pt").match(data["cimexp.checkpoints"][0])


def test_configs_sweeps_and_the_float_checkpoint_are_found_through_the_package() -> None:
    assert config_dir() == Path(str(resources.files("cimexp.conf")))
    assert (config_dir() / "train.yaml").is_file()
    assert Path(shipped_file("resnet20_cifar10_float.pt")).is_file()
    with pytest.raises(FileNotFoundError, match="resnet20_cifar10_float.pt"):
        shipped_file("resnet56.pt")


def test_composing_does_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose("train", ["experiment=quick", "sweep=granularity_grid/quick"])
    assert cfg.model.init_from == shipped_file("resnet20_cifar10_float.pt")
    assert cfg.paths.log_dir == f"{tmp_path}/logs"  # the user's files: the launch directory


def test_a_user_config_folder_adds_presets(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_chip.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /adc: 3bit\narray:\n  size: 256\n"
    )
    cfg = compose("train", ["experiment=my_chip"], config_dir=str(tmp_path))
    assert (cfg.adc.bits, cfg.array.size) == (3, 256)


def _imports(path: Path, package: str) -> list[list[str]]:
    """The cimexp imports of ``path`` (module level or inside functions), each as its candidate module names:
    ``from cimexp.report import stats`` -> ``["cimexp.report.stats", "cimexp.report"]`` (a submodule, or a name of
    the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level > 0:  # relative: from the package up
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [[f"{base}.{alias.name}", base] for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [[alias.name] for alias in node.names]
    return [names for names in found if names[0].startswith("cimexp")]


def _module_graph() -> dict[str, set[str]]:
    """Module -> the cimexp modules it imports (a dotted name resolved to the longest existing module)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, name if path.name == "__init__.py" else name.rpartition(".")[0])
    graph = {}
    for name, (path, package) in modules.items():
        targets = set()
        for candidates in _imports(path, package):
            module = next((c for c in candidates if c in modules), None)
            while module is None and "." in candidates[-1]:
                candidates = [candidates[-1].rpartition(".")[0]]
                module = candidates[0] if candidates[0] in modules else None
            if module is not None and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def test_no_entry_point_imports_another() -> None:
    graph = _module_graph()
    for module, targets in graph.items():
        if module != "cimexp.report.__main__":
            assert not (targets & set(ENTRY_POINTS)), f"{module} imports {targets & set(ENTRY_POINTS)}"


def test_no_import_cycles_between_modules() -> None:
    """A member importing a name that its own package's ``__init__`` re-exports (``from cimexp.cim import X`` in
    ``cimexp.cim.cost``) is not a cycle of code: Python initialises the package first. Every other cycle is."""
    graph = _module_graph()
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_entry_points_are_declared() -> None:
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {
        "cimexp-train": "cimexp.train:main",
        "cimexp-evaluate": "cimexp.evaluate:main",
        "cimexp-post-training": "cimexp.post_training:main",
        "cimexp-cost": "cimexp.cost:main",
        "cimexp-report": "cimexp.report.cli:main",
    }


def test_the_layout_shows_the_architecture() -> None:
    """``src/cimexp/`` holds the entry points, the run machinery, the layer library, models, data, reports and the
    two file-format modules, and nothing else."""
    entry_points = {"train.py", "evaluate.py", "post_training.py", "cost.py", "bench.py"}
    packages = {"run", "cim", "models", "data", "report"}
    formats = {"results.py", "files.py"}
    found = {p.name for p in SRC.iterdir() if p.name != "__pycache__"}
    assert found == entry_points | packages | formats | {"__init__.py"}


MAX_MODULE_LINES = 500
MAX_ENTRY_POINT_LINES = 160


def test_modules_are_small_and_entry_points_thin() -> None:
    """No module of ``src/cimexp`` over 500 lines; an entry point (compose, build, run, write) under about 150."""
    lines = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    too_long = {path: n for path, n in lines.items() if n > MAX_MODULE_LINES}
    assert too_long == {}
    entry_points = {"train.py", "evaluate.py", "post_training.py", "cost.py", "bench.py"}
    thick = {path: lines[path] for path in entry_points if lines[path] > MAX_ENTRY_POINT_LINES}
    assert thick == {}


def test_the_config_machinery_loads_no_lightning() -> None:
    """Composing and the config checks import no Lightning (only building the data module, a LightningDataModule,
    to check its arguments does)."""
    code = (
        "import sys\n"
        "import cimexp.run.config, cimexp.run.build, cimexp.run.post_training, cimexp.files, cimexp.results\n"
        "import cimexp.cim\n"
        "cimexp.run.config.compose('train', [])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_only_hydras_public_api_is_used() -> None:
    users = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert users == []


def test_the_report_and_the_vocabulary_load_without_torch() -> None:
    code = (
        "import sys\n"
        "import cimexp.cim.vocabulary, cimexp.report, cimexp.report.cli, cimexp.results\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
