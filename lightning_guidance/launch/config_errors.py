"""One line for a config the parser refused: the key, what is wrong, and the nearest valid name.

jsonargparse explains a refused value as an indented tree (``Parser key "model":`` / ``Problem with given class_path
'...':`` / the Union's alternatives / the given value), 10 to 30 lines with the cause at the bottom. This module reads
that tree, follows the branch that failed (the class that was given, not the ``None`` alternative) down to its cause,
and writes the cause as one line naming the full key (``model.init_args.net.class_path``) with the nearest valid name:
a class of the module (``lightning_guidance.nets.UNett`` -> ``UNet``), an argument of the class (``p_uncnd`` ->
``p_uncond``), an option of the subcommand (``--trainer.max_step`` -> ``--trainer.max_steps``). A message it does not
recognise keeps its innermost line, still with the key. No Lightning is imported here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterable

from ..io.instantiate import nearest_name


class UsageError(ValueError):
    """A command line or config that was refused; ``detail`` holds the parser's whole message (``--debug``)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":?$')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':?$")
_SKIP = ("Subtypes:", "Given value", "Does not validate against any of the Union subtypes")
_NONE_BRANCH = re.compile(r"^- Expected a <class 'NoneType'>")


def _tree(text: str) -> list[tuple[str, list]]:
    """Indented lines as ``(line, children)`` nodes."""
    root: list = []
    stack: list[tuple[int, list]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack[-1][0] >= indent:
            stack.pop()
        node = (raw.strip(), [])
        stack[-1][1].append(node)
        stack.append((indent, node[1]))
    return root


def _join(key: str, cls: str | None, name: str) -> str:
    if cls is not None:
        return f"{key}.init_args.{name}" if key else name
    return f"{key}.{name}" if key else name


def _flatten(nodes: list) -> list[str]:
    return [line for line, children in nodes for line in [line, *_flatten(children)]]


def _cause(nodes: list, key: str = "", cls: str | None = None) -> tuple[str, str | None, str]:
    """Follow the failed branch: ``(full key, class whose arguments it is, the cause's text)``."""
    for line, children in nodes:
        if m := _KEY.match(line):
            return _cause(children, _join(key, cls, m.group(1)), cls)
        if m := _CLASS.match(line):
            return _cause(children, key, m.group(1))
        if line == "Errors:":
            branches = [n for n in children if not _NONE_BRANCH.match(n[0])] or children
            chosen = next((n for n in branches if _CLASS.match(n[0])), branches[0] if branches else None)
            if chosen is not None:
                return _cause([chosen], key, cls)
    for line, children in nodes:  # no structure left: the first line that is not bookkeeping is the cause
        if not line.startswith(_SKIP) and line != "Errors:":
            return key, cls, " ".join([line.removeprefix("- "), *_flatten(children)])
    return key, cls, ""


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    return nearest_name(name, candidates)


def _did_you_mean(name: str, candidates: Iterable[str], accepted: bool = False) -> str:
    candidates = sorted(set(candidates))
    best = nearest(name, candidates)
    if best:
        return f"; did you mean {best}?"
    return f" (accepted: {', '.join(candidates)})" if accepted and candidates and len(candidates) <= 30 else ""


def _public_classes(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    names = [n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")]
    if hasattr(module, "__path__"):
        names += [m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("_")]
    return names


def _missing_class(path: str, module_name: str, attribute: str) -> str:
    """``module 'M' has no attribute 'N'``: the segment N of ``path`` is a typo; offer M's nearest name."""
    best = nearest(attribute, _public_classes(module_name))
    if best is None:
        return f"{path} does not exist ({module_name} has no {attribute})"
    parts = path.split(".")
    parts[len(module_name.split("."))] = best
    return f"{path} does not exist; did you mean {'.'.join(parts)}?"


def _arguments(cls_path: str | None) -> list[str]:
    if cls_path is None:
        return []
    try:
        cls = _import(cls_path)
        params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]


def _unknown_key(key: str, options: Iterable[str]) -> tuple[str, str | None]:
    """The first segments of ``key`` that no option has, and the nearest valid key there (``trainer.max_step`` ->
    ``trainer.max_steps``, ``modle.init_args.net`` -> ``modle``, ``model``)."""
    known = [o.lstrip("-").split(".") for o in options if o.startswith("--")]
    parts = key.split(".")
    for i in range(len(parts)):
        here = [o for o in known if o[:i] == parts[:i]]
        names = {".".join(o[:i + 1]) for o in here if len(o) > i}
        wrong = ".".join(parts[:i + 1])
        if wrong not in names:
            return wrong, nearest(wrong, names)
    return key, None


_ANY = object()


def _locate(node, parts: list[str], value=_ANY) -> str | None:
    """Where a loaded YAML sets the dotted key ``parts`` (to ``value`` if given): the key as written there (list
    items as ``[i]``; an ``init_args`` the file leaves out is skipped), or None."""
    if not parts:
        return "" if value is _ANY or str(node) == str(value) else None
    if isinstance(node, list):
        for i, item in enumerate(node):
            found = _locate(item, parts, value)
            if found is not None:
                return f"[{i}]{found}"
        return None
    if not isinstance(node, dict):
        return None
    head, rest = parts[0], parts[1:]
    if head in node:
        found = _locate(node[head], rest, value)
        if found is not None:
            return f".{head}{found}"
    if head == "init_args":
        return _locate(node, rest, value)
    return None


def _files_with(key: str, config_files: Iterable[str], value=_ANY) -> list[tuple[str, str]]:
    """``(file, key as written there)`` for each config file (YAML) that sets ``key`` (to ``value`` if given)."""
    import yaml

    found = []
    for path in config_files:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        where = _locate(data, key.split("."), value)
        if where is not None:
            found.append((str(path), where.lstrip(".")))
    return found


def _subclass_names(nodes: list) -> dict[str, str]:
    """``short name -> class path`` of the loaded subclasses of the base classes a ``Subtypes:`` line lists."""
    bases = [b for line in _flatten(nodes) if line.startswith("Subtypes:")
             for b in re.findall(r"<class '([\w.]+)'>", line) if b != "NoneType"]
    out: dict[str, str] = {}
    for base in bases:
        try:
            stack = [_import(base)]
        except (ImportError, AttributeError, ValueError):
            continue
        while stack:
            cls = stack.pop()
            stack += cls.__subclasses__()
            if not cls.__name__.startswith("_"):
                out.setdefault(cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
    return out


def explain_parser_error(message: str, options: Iterable[str] = (), config_files: Iterable[str] = ()) -> str:
    """One line for jsonargparse's ``message``; ``options``: the option strings of the subcommand's parser (for the
    nearest of an unrecognized one); ``config_files``: the ``--config`` files given (the line names those that set
    the key)."""
    text = message.strip()
    first = text.splitlines()[0] if text else "the command line was refused"
    if m := re.match(r"unrecognized arguments: (\S+)", first, re.IGNORECASE):
        given = m.group(1).split("=", 1)[0]
        best = nearest(given, [o for o in options if o.startswith("--")])
        hint = f"; did you mean {best}?" if best else " (run with --help for the accepted options)"
        return f"unrecognized option {given}{hint}"
    key, what, value = _explain(text, first, options)
    if not key:
        return what
    files = _files_with(key, config_files, value) if value is not None else []
    if files:  # the key as that file writes it (list items by index), and the file
        key = files[-1][1]
        return f"{key} (in {', '.join(f for f, _ in files)}): {what}"
    return f"{key}: {what}"


def _explain(text: str, first: str, options: Iterable[str]) -> tuple[str, str, object]:
    """``(the key at fault, what is wrong with it, its value to find it in a config file by)``: ``_ANY`` finds
    the key whatever its value, None does not look."""
    if m := re.match(r"Subcommand '(\w+)' does not accept option '([^']+)'", first):
        sub, given = m.groups()
        key, best = _unknown_key(given, options)
        return key, f"{sub} has no option {key}{f'; did you mean {best}?' if best else ''}", _ANY
    tree = _tree(text)
    key, cls, cause = _cause(tree)
    short = cls.rpartition(".")[2] if cls else None
    if m := re.search(r"Expected a dot import path string: (\w+)", cause):
        from .help import import_suite_classes

        import_suite_classes()  # the suite's classes are candidates even when none was imported yet
        names = _subclass_names(tree)
        best = nearest(m.group(1), names)
        return key, f"no class named {m.group(1)}" + (f"; did you mean {names[best]}?" if best else
                                                     " (give its full class path)"), m.group(1)
    if m := re.search(r"module '([\w.]+)' has no attribute '(\w+)'", cause):
        path = cls or f"{m.group(1)}.{m.group(2)}"
        return f"{key}.class_path", _missing_class(path, m.group(1), m.group(2)), path
    if m := re.search(r"No module named '([\w.]+)'", cause):
        parent, _, leaf = m.group(1).rpartition(".")
        path = cls or m.group(1)
        return f"{key}.class_path", (_missing_class(path, parent, leaf) if parent else
                                     f"no module named {m.group(1)}"), path
    if m := re.search(r"Option '([^']+)' is not accepted", cause):
        bad = m.group(1)
        owner = f"{short} has" if short else "there is"
        what = f"{owner} no argument {bad}{_did_you_mean(bad, _arguments(cls), accepted=True)}"
        return _join(key, cls, bad), what, _ANY
    if m := re.search(r"the following arguments are required: (.+)$", cause):
        names = [n.strip() for n in m.group(1).split(",")]
        keys = [_join(key, cls, n) for n in names]
        return ", ".join(keys), f"required{f' by {short}' if short else ''} and not given: add it to the config " \
                                f"or the command line (--{keys[0]} ...)", None
    if m := re.search(r"Expected a <class '(\w+)'>\. Got value: (.*)$", cause):
        return key, f"expected a {m.group(1)}, got {m.group(2)}", m.group(2)
    return key, cause or first, None
