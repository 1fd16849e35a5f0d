"""Where architectures come from (``qegraph.graph.arch``): factory functions, classes with non-JSON
arguments, the current directory, recorded constructor arguments for ``to_module()`` without a template."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import qegraph
from qegraph.errors import QegraphError
from qegraph.graph.arch import arch_from_module, module_from_arch
from real_nets import make_real

TESTS = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)


@pytest.fixture
def fresh_modules():
    """Forget the modules a test imports from its temporary directory."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def record(target: str, **kwargs) -> dict:
    return {"type": "class", "target": target, "kwargs": kwargs}


# ---------------------------------------------------------------------------------------- factories
def test_factory_function_builds_and_converts(tmp_path: Path) -> None:
    """``--arch real_nets:resnet_basic`` (a factory like ``torchvision.models:resnet18``), with kwargs."""
    module, x = make_real("resnet_basic_nobn")
    torch.save(module.state_dict(), tmp_path / "r.pt")
    g = qegraph.convert(tmp_path / "r.pt", arch="real_nets:resnet_basic", arch_kwargs={"norm": False})
    assert g.arch == record("real_nets:resnet_basic", norm=False)
    qegraph.save_graph(g, tmp_path / "r.qeg")
    rebuilt = qegraph.load_graph(tmp_path / "r.qeg").to_module()  # no template: the factory is called again
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))


def test_function_without_a_module_annotation_is_not_called(tmp_path: Path, monkeypatch, fresh_modules) -> None:
    (tmp_path / "h2_unannotated.py").write_text("def make():\n    raise AssertionError('called')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QegraphError, match=r"not an nn.Module subclass nor a function annotated.*-> nn.Module"):
        module_from_arch(record("h2_unannotated:make"))


def test_factory_result_is_checked_after_the_call(tmp_path: Path, monkeypatch, fresh_modules) -> None:
    (tmp_path / "h2_liar.py").write_text("from torch import nn\n\ndef make() -> nn.Module:\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QegraphError, match="returned a int, not an nn.Module"):
        module_from_arch(record("h2_liar:make"))


@pytest.mark.parametrize("kwargs", [{"pretrained": True}, {"weights": "DEFAULT"}])
def test_download_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(QegraphError, match="pretrained weights; the weights come from the checkpoint"):
        module_from_arch(record("real_nets:resnet_basic", **kwargs))


def test_class_with_non_json_arguments_explains_the_factory_alternative() -> None:
    with pytest.raises(QegraphError) as err:
        module_from_arch(record("real_nets:ResNet"))
    msg = str(err.value)
    assert "needs 'block', 'layers'" in msg and "factory function" in msg and "--arch mynets:make" in msg


def test_unknown_argument_is_named() -> None:
    with pytest.raises(QegraphError, match="nope"):
        module_from_arch(record("real_nets:VGG", nope=1))


def test_timm_names_resolve_to_timm_models(tmp_path: Path, monkeypatch, fresh_modules) -> None:
    """``timm:NAME`` finds the model function in ``timm.models`` (a stand-in package; no real timm here)."""
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("a real timm is installed; the stand-in package would shadow it")
    (tmp_path / "timm" / "models").mkdir(parents=True)
    (tmp_path / "timm" / "__init__.py").write_text("")
    (tmp_path / "timm" / "models" / "__init__.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny_net(pretrained: bool = False, num_classes: int = 3) -> nn.Sequential:
            return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    m = module_from_arch(record("timm:tiny_net", num_classes=5))
    assert isinstance(m, nn.Sequential) and m[2].out_features == 5


# ---------------------------------------------------------------------------------------- current directory
MYNETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.width = width
            self.a, self.b = nn.Linear(3, width), nn.Linear(width, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    def make(width: int = 4) -> nn.Module:
        return Net(width)
""")


@pytest.mark.parametrize("target", ["h2_mynets:Net", "h2_mynets:make"])
def test_targets_resolve_from_the_current_directory(tmp_path: Path, monkeypatch, fresh_modules, target: str) -> None:
    (tmp_path / "h2_mynets.py").write_text(MYNETS)
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    torch.manual_seed(0)
    net = module_from_arch(record(target, width=6)).double()
    torch.save(net.state_dict(), tmp_path / "n.pt")
    g = qegraph.convert(tmp_path / "n.pt", arch=target, arch_kwargs={"width": 6})
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(g.to_module()(x), net(x))
    assert str(tmp_path) not in sys.path  # the search path is restored


# ---------------------------------------------------------------------------------------- recorded arguments
class Stored(nn.Module):
    """Keeps its constructor arguments in attributes of the same names: recordable."""

    def __init__(self, width: int = 4, scale: float = 1.0, act: str = "relu") -> None:
        super().__init__()
        self.width, self.scale, self.act = width, scale, act
        self.a, self.b = nn.Linear(3, width), nn.Linear(width, 2)

    def forward(self, x):
        h = self.a(x) * self.scale
        return self.b(torch.relu(h) if self.act == "relu" else torch.tanh(h))


class Hidden(nn.Module):
    """A constructor argument that changes forward but is not kept under its own name."""

    def __init__(self, negate: bool = False) -> None:
        super().__init__()
        self.sign = -1.0 if negate else 1.0
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x) * self.sign


class Renamed(nn.Module):
    """An attribute named like a constructor argument that holds something else."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = 2 * width
        self.a = nn.Linear(3, width)

    def forward(self, x):
        return self.a(x)


class ReadsValues(nn.Module):
    """A constructor that reads tensor values (timm's drop-path rates): cannot run on the meta device."""

    def __init__(self, depth: int = 2, rate: float = 0.1) -> None:
        super().__init__()
        self.depth, self.rate = depth, rate
        self.rates = [x.item() for x in torch.linspace(0, rate, depth)]
        self.layers = nn.Sequential(*[nn.Linear(3, 3) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


def _x() -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def test_to_module_without_template_for_a_recordable_class() -> None:
    torch.manual_seed(0)
    m = Stored(width=6, scale=0.5, act="tanh").double()
    g = qegraph.to_graph(m)
    assert g.arch == record("test_arch_sources:Stored", width=6, scale=0.5, act="tanh")
    with torch.no_grad():
        assert torch.equal(g.to_module()(_x()), m(_x()))


def test_constructor_reading_tensor_values_is_recorded() -> None:
    m = ReadsValues(3, 0.2).double()
    g = qegraph.to_graph(m)
    assert g.arch == record("test_arch_sources:ReadsValues", depth=3, rate=0.2)
    with torch.no_grad():
        assert torch.equal(g.to_module()(_x()), m(_x()))


@pytest.mark.parametrize("module,why", [
    (Hidden(negate=True), "attribute 'sign' of the module differs"),
    (Renamed(width=3), "Renamed(**{'width': 6}) does not rebuild the module: attribute 'width' of the module differs"),
])
def test_unverifiable_arguments_are_not_recorded(module: nn.Module, why: str) -> None:
    g = qegraph.to_graph(module.double())
    assert g.arch["kwargs"] is None and why in g.arch["reason"]
    with pytest.raises(QegraphError, match=r"not its constructor arguments.*template="):
        g.to_module()


def test_defaults_are_recorded_when_the_attribute_misleads() -> None:
    """Renamed() built with defaults: reading width=8 back fails verification, the defaults pass."""
    m = Renamed().double()
    g = qegraph.to_graph(m)
    assert g.arch == record("test_arch_sources:Renamed")
    with torch.no_grad():
        assert torch.equal(g.to_module()(_x()), m(_x()))


def test_class_defined_in_a_function_is_not_recorded() -> None:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)

    rec = arch_from_module(Local())
    assert rec["kwargs"] is None and "inside a function" in rec["reason"]


def test_factory_built_module_needs_a_template() -> None:
    """torchvision-style: ResNet(block=BasicBlock, …) cannot be recorded from the module alone."""
    module, x = make_real("resnet_basic")
    g = qegraph.to_graph(module)
    assert "'block' cannot be read back" in g.arch["reason"]
    with pytest.raises(QegraphError, match="template="):
        g.to_module()
    with torch.no_grad():
        assert torch.equal(g.to_module(template=module)(x), module(x))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet", "vgg_bn"])
def test_real_nets_built_with_defaults_rebuild_without_template(name: str) -> None:
    module, x = make_real(name)
    g = qegraph.to_graph(module)
    assert g.arch["kwargs"] == {}
    with torch.no_grad():
        assert torch.equal(g.to_module()(x), module(x))


def test_non_default_real_net_is_not_recorded_wrongly() -> None:
    """MobileNetV2(norm=False) does not keep ``norm``: the defaults would add BatchNorm, so nothing is recorded."""
    g = qegraph.to_graph(make_real("mobilenet_v2_nobn")[0])
    assert g.arch["kwargs"] is None


def test_torch_nn_layer_is_recorded() -> None:
    conv = nn.Conv2d(3, 4, 3, stride=2, groups=1, bias=False).double()
    g = qegraph.to_graph(conv)
    assert g.arch["kwargs"]["bias"] is False and g.arch["kwargs"]["stride"] == [2, 2]
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(g.to_module()(x), conv(x))
