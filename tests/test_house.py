"""The house's rules that review misses: tests stand alone, the benchmarks need no test, every package of alliter
says what it owns and names its modules."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module a file imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_and_no_benchmark_imports_a_test():
    tests = {p.stem for p in (REPO / "tests").glob("*.py")}
    test_modules = {t for t in tests if t.startswith("test_")}
    for path in sorted((REPO / "tests").glob("*.py")):
        assert not imported_modules(path) & test_modules, f"{path.name} imports a test module"
    for path in sorted((REPO / "bench").glob("*.py")):
        assert not imported_modules(path) & (tests | {"tests"}), f"bench/{path.name} imports from tests/"


def test_every_package_of_alliter_has_a_docstring_that_says_what_it_owns():
    for init in sorted((REPO / "alliter").rglob("__init__.py")):
        if init.parent.name == "models":  # data: the bundled model's folder
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init.relative_to(REPO)} says nothing of what it owns"
        if init.parent.name != "alliter":  # a sub-package's docstring is its map: it names every module
            for module in sorted(init.parent.glob("*.py")):
                assert module.name == "__init__.py" or module.name in doc, f"{init.relative_to(REPO)} omits {module.name}"


def test_every_private_api_alliter_leans_on_is_still_there():
    """Each one is fenced in one function (with a fallback where one exists); a release that moves one fails here,
    loudly, rather than in a sweep."""
    import torch
    from ray._private.accelerators import get_accelerator_manager_for_resource  # cluster.local_gpus
    from ray._private.state import state  # cluster.find_autoscaler: the GCS's cluster config (autoscaler v2)
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor  # sweep/trackers._wandb_callback_class
    from ray.experimental.internal_kv import _internal_kv_get  # noqa: F401  cluster._autoscaling_status
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # compiled.cache_dir

    from alliter import measures as M
    from alliter.sweep.cluster import local_gpus
    from alliter.train.fast.scoring import softmax_backward

    assert isinstance(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators(), int)
    assert isinstance(local_gpus(), int)
    assert isinstance(default_cache_dir(), str)
    assert callable(state.get_cluster_config)
    # the logging actor's run() (wandb.init, the queue, wandb.finish) and the callback's class attribute naming it
    assert callable(_WandbLoggingActor.run) and WandbLoggerCallback._logger_actor_cls is _WandbLoggingActor
    # Tune's count of its callbacks (run.skip_tunes_callback_census): tune.run calls it, and skipped it imports nothing
    from ray.tune import tune as tune_module

    assert "air_usage.tag_callbacks(callbacks)" in inspect.getsource(tune_module.run)
    code = ("import sys; from alliter.sweep.run import skip_tunes_callback_census as skip; from ray import tune; skip(); "
            "from ray.tune.tune import air_usage; air_usage.tag_callbacks([tune.Callback()]); "
            "print(sorted({'mlflow', 'wandb'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    # torch's private softmax backward, against its formula
    p = torch.softmax(torch.randn(3, 4, 5, dtype=torch.float64), -1)
    grad = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(softmax_backward(grad, p), p * (grad - (grad * p).sum(-1, keepdim=True)))
    # sacrebleu's internals, against its public sentence BLEU (self_bleu's own test has the equality on real groups)
    texts = ["the cat sat on the mat", "the cat sat on a hat", "a dog ran in the park"]
    bleu = M.bleu()
    expected = sum(bleu.sentence_score(t, [o for o in texts if o is not t]).score for t in texts) / 3 / 100
    assert M.self_bleu(texts, bleu) == pytest.approx(expected)
