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

__all__ = [
    "CONTROL_VALUES",
    "SEED_NAMES",
    "VALUE_WIDGET_TYPES",
    "WIDGET_TYPES",
    "InputSpec",
    "NodeCatalog",
    "NodeSpec",
    "WidgetSlot",
]

VALUE_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Widget types whose value is sent to the server and that values are checked against."""

WIDGET_TYPES = VALUE_WIDGET_TYPES | frozenset(
    {"MARKDOWN", "COLOR", "TEXTAREA", "IMAGECOMPARE", "CHART", "GALLERIA", "IMAGEUPLOAD"}
    | {"AUDIOUPLOAD", "AUDIO_UI", "AUDIO_RECORD", "WEBCAM", "LOAD_3D", "PREVIEW_3D"}
)
"""Input types the editor (frontend 1.32) shows as a widget rather than as a link socket.

The first row is the frontend's own widget registry, the second the widgets its bundled
extensions register (audio, webcam, 3D).
"""

SEED_NAMES = ("seed", "noise_seed")
"""INT inputs the editor gives a ``control_after_generate`` widget even without the option."""

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
"""The values of a ``control_after_generate`` widget (a combo's may also be ``increment-wrap``)."""

_MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
_PREVIEW_3D_NODES = frozenset({"Preview3D", "SaveGLB"})
_AUDIO_UI_NODES = frozenset(
    {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}
)


@dataclass(frozen=True)
class WidgetSlot:
    """One position of a saved node's ``widgets_values`` list.

    Attributes:
        name: the widget's name (an input name for a value widget).
        input: the input the widget holds a value for, or ``None`` for a widget the editor adds
            on its own (``control_after_generate``, ``control_filter_list``, an upload button).
        sends: whether the value goes into the API graph (``input`` set and serialised).
        control_of: for a ``control_after_generate`` widget, the input it controls.
    """

    name: str
    input: InputSpec | None = None
    sends: bool = False
    control_of: str | None = None


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
    """

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    is_widget: bool = False
    choices: tuple[Any, ...] | None = None
    control_after_generate: bool = False

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
        widget_slots: the widgets the editor builds for the class, in the order of a saved
            node's ``widgets_values`` (the frontend's own extra widgets included).
    """

    class_type: str
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    display_name: str = ""
    category: str = ""
    widget_slots: tuple[WidgetSlot, ...] = ()

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
        try:
            return self._specs[class_type]
        except KeyError:
            pass
        definition = self._raw.get(class_type)
        spec = _node_spec(class_type, definition) if isinstance(definition, Mapping) else None
        self._specs[class_type] = spec
        return spec


def _input_spec(name: str, raw: Any, *, required: bool) -> InputSpec:
    """One input from its catalog entry: ``[TYPE, {options}]``, ``[[choices], {options}]``."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        return InputSpec(name, "*", {}, required)
    kind, options = raw[0], raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    choices: tuple[Any, ...] | None = None
    if isinstance(kind, (list, tuple)):
        choices, kind = tuple(kind), "COMBO"
    elif kind == "COMBO":
        choices = tuple(options.get("options") or ())
    kind = str(kind)
    is_widget = kind in WIDGET_TYPES and not options.get("forceInput")
    control = bool(
        is_widget
        and (
            (kind == "INT" and options.get("control_after_generate", name in SEED_NAMES))
            or (kind == "COMBO" and options.get("control_after_generate"))
        )
    )
    return InputSpec(name, kind, options, required, is_widget, choices, control)


def _ordered(definition: Mapping[str, Any], inputs: dict[str, InputSpec]) -> list[InputSpec]:
    """The frontend's input order: ``input_order`` first (required, optional), then the rest."""
    order = definition.get("input_order")
    if not isinstance(order, Mapping):
        return list(inputs.values())
    ordered: list[InputSpec] = []
    for section, required in (("required", True), ("optional", False)):
        for name in order.get(section) or ():
            spec = inputs.get(name)
            if spec is not None and spec.required == required and spec not in ordered:
                ordered.append(spec)
    ordered += [spec for spec in inputs.values() if spec not in ordered]
    return ordered


def _node_spec(class_type: str, definition: Mapping[str, Any]) -> NodeSpec:
    sections = definition.get("input") if isinstance(definition.get("input"), Mapping) else {}
    inputs: dict[str, InputSpec] = {}
    for section, required in (("required", True), ("optional", False)):
        entries = sections.get(section)
        if isinstance(entries, Mapping):
            for name, raw in entries.items():
                inputs.setdefault(str(name), _input_spec(str(name), raw, required=required))
    catalog_inputs = _ordered(definition, inputs)
    # What the frontend's bundled extensions append to a definition before building the node
    # (after input_order, so last): the 3D viewer, the audio player, then an upload button after
    # the first media combo (Comfy.Preview3D, Comfy.SaveGLB, Comfy.AudioWidget,
    # Comfy.UploadImage, Comfy.UploadAudio).
    extra: list[InputSpec] = []
    if class_type in _PREVIEW_3D_NODES:  # a 3D viewer whose value ("" or a file) is sent
        viewer = InputSpec("image", "PREVIEW_3D", {}, True, True)
        replaced = [viewer if i.name == "image" and i.required else i for i in catalog_inputs]
        if replaced == catalog_inputs:
            extra.append(viewer)
        catalog_inputs = replaced
    if class_type in _AUDIO_UI_NODES:
        extra.append(InputSpec("audioUI", "AUDIO_UI", {}, True, True))
    required = [spec for spec in catalog_inputs if spec.required]
    media = next(
        (
            spec
            for spec in required
            if spec.type == "COMBO"
            and any(spec.options.get(o) is True for o in _MEDIA_UPLOAD_OPTIONS)
        ),
        None,
    )
    if media is not None:
        extra.append(InputSpec("upload", "IMAGEUPLOAD", {"imageInputName": media.name}, True, True))
    audio = inputs.get("audio")
    if audio is not None and audio.required and audio.options.get("audio_upload") is True:
        extra.append(InputSpec("upload", "AUDIOUPLOAD", {}, True, True))
    outputs = definition.get("output") or ()
    names = definition.get("output_name") or ()
    return NodeSpec(
        class_type=class_type,
        inputs=tuple(catalog_inputs),
        outputs=tuple(str(o) if not isinstance(o, list) else "COMBO" for o in outputs),
        output_names=tuple(str(n) for n in names),
        output_node=bool(definition.get("output_node")),
        display_name=str(definition.get("display_name") or class_type),
        category=str(definition.get("category") or ""),
        widget_slots=_widget_slots([*catalog_inputs, *extra]),
    )


def _widget_slots(inputs: list[InputSpec]) -> tuple[WidgetSlot, ...]:
    slots: list[WidgetSlot] = []
    for spec in inputs:
        if not spec.is_widget:
            continue
        if spec.type == "AUDIO_UI":  # a DOM widget marked serialize=false: it holds no slot
            continue
        if spec.type in ("IMAGEUPLOAD", "AUDIOUPLOAD"):  # a button: a slot, nothing sent
            slots.append(WidgetSlot(spec.name))
            continue
        slots.append(WidgetSlot(spec.name, spec, sends=True))
        if spec.control_after_generate:
            slots.append(WidgetSlot("control_after_generate", control_of=spec.name))
            if spec.type == "COMBO":
                slots.append(WidgetSlot("control_filter_list"))
    return tuple(slots)
