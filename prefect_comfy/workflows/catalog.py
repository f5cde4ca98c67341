"""The node catalog: a pure reading of what a ComfyUI server's ``GET /object_info`` returns.

For each node class it says which inputs the node takes, in the catalog's order (required, then
optional), which of them are widgets (values typed in the editor: ``INT``, ``FLOAT``, ``STRING``,
``BOOLEAN``, combo lists) and which are links (any other type, such as ``MODEL``), with their
options (default, min, max, step, choices). It also says which widgets the ComfyUI editor adds on
its own after a widget and that carry no value for the server (``control_after_generate`` after a
seed, the ``upload`` button of an image loader), so that a saved ``widgets_values`` list can be
matched to input names.

No I/O: the caller fetches ``/object_info`` (and caches it); this module only interprets it.

Example:
    >>> catalog = NodeCatalog({"EmptyImage": {"input": {"required": {
    ...     "width": ["INT", {"default": 512, "min": 1, "max": 16384}]}}, "output": ["IMAGE"]}})
    >>> spec = catalog.node("EmptyImage")
    >>> spec.input("width").maximum
    16384
    >>> catalog.node("NoSuchNode") is None
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WIDGET_TYPES", "InputSpec", "NodeCatalog", "NodeSpec"]

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types the editor shows as a widget (a value), not as a link socket."""


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class, as the catalog describes it.

    Attributes:
        name: the input's name, the key in an API-format node's ``inputs``.
        type: ``"INT"``, ``"FLOAT"``, ``"STRING"``, ``"BOOLEAN"``, ``"COMBO"`` (a list of choices),
            or a link type such as ``"MODEL"`` or ``"IMAGE"`` (``"*"`` for any).
        options: the catalog's option mapping (``default``, ``min``, ``max``, ``step``,
            ``multiline``, ``control_after_generate``, ``image_upload`` ...), empty if none.
        required: whether it is under ``required`` (else ``optional``).
        is_widget: whether the editor shows it as a widget holding a value.
        choices: the allowed values of a combo, else ``None``.
        control_after_generate: whether the editor adds a ``control_after_generate`` widget
            (fixed / increment / decrement / randomize) right after this one.
        upload_widget: whether the editor adds an upload button after this one (it has no value
            in ``widgets_values``'s order but it does occupy a slot; see :attr:`extra_widgets`).
    """

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    is_widget: bool = False
    choices: tuple[Any, ...] | None = None
    control_after_generate: bool = False
    upload_widget: bool = False

    @property
    def default(self) -> Any:
        """The catalog's default value, or ``None``."""
        return self.options.get("default")

    @property
    def minimum(self) -> Any:
        """The catalog's ``min``, or ``None``."""
        return self.options.get("min")

    @property
    def maximum(self) -> Any:
        """The catalog's ``max``, or ``None``."""
        return self.options.get("max")

    @property
    def step(self) -> Any:
        """The catalog's ``step``, or ``None``."""
        return self.options.get("step")


@dataclass(frozen=True)
class NodeSpec:
    """One node class of the catalog.

    Attributes:
        class_type: the class name (``"KSampler"``).
        inputs: every input in the catalog's order, required first, then optional.
        outputs: the output types, in order.
        output_names: the output names, in order.
        output_node: whether the node is an output (``SaveImage``), which makes a graph run.
        display_name: the name the editor shows.
        category: the editor's menu category.
    """

    class_type: str
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    display_name: str = ""
    category: str = ""

    def input(self, name: str) -> InputSpec | None:
        """The input called ``name``, or ``None``."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def widgets(self) -> tuple[InputSpec, ...]:
        """The inputs shown as widgets, in order."""
        return tuple(spec for spec in self.inputs if spec.is_widget)


class NodeCatalog:
    """The node classes a server knows, read from its ``/object_info`` mapping.

    Node classes are interpreted lazily and once each, so building a catalog of a thousand
    classes costs nothing until a class is asked for.

    Args:
        object_info: the mapping ``GET /object_info`` returns (class name -> definition).
    """

    def __init__(self, object_info: Mapping[str, Any]) -> None:
        self._raw = object_info
        self._specs: dict[str, NodeSpec | None] = {}

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and self.node(class_type) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def node(self, class_type: str) -> NodeSpec | None:
        """The class called ``class_type``, or ``None`` if the server does not have it."""
        raise NotImplementedError  # skeleton: filled in the next commit
