# Copyright (c) monai_ext contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Screen a MONAI bundle config against an allow-list of modules before anything in it is run.

Bundle configs are code: MONAI instantiates every ``_target_`` by importing it, with no allow-list, and passes every
``"$..."`` string to ``eval``/``exec`` (see MONAI's advisory GHSA-873f-pvrv-4x83). This module walks a parsed
config without evaluating anything and reports:

- ``_target_`` values that resolve outside the allowed module prefixes (short names are resolved the way MONAI's
  ``ComponentLocator`` does; a short name MONAI does not know would be looked up as a top-level name, e.g. a
  builtin, and is reported), and ``_target_`` values that are not plain dotted names (``$`` or ``@``);
- ``$import x`` / ``$from x import y`` with ``x`` outside the allowed prefixes;
- ``$`` expressions naming builtins that reach arbitrary code or files (``eval``, ``exec``, ``__import__``,
  ``open``, ``getattr``, ...) or dunder attributes (``__class__``, ``__globals__``, ...), and expressions that are
  not valid Python.

It is a screen, not a sandbox: an expression can still call whatever the allowed modules expose. Use it on
third-party bundles before loading them, and run only bundles whose author you trust.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator

__all__ = [
    "CONFIG_SUFFIXES",
    "DEFAULT_ALLOWED_PREFIXES",
    "UntrustedConfigError",
    "check_bundle_configs",
    "check_config_targets",
    "config_findings",
]

DEFAULT_ALLOWED_PREFIXES = ("monai.", "monai_ext.", "torch.", "ignite.")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# builtins through which an expression reaches arbitrary code, modules or files
UNSAFE_NAMES = frozenset(
    {
        "__import__",
        "__builtins__",
        "breakpoint",
        "compile",
        "delattr",
        "eval",
        "exec",
        "getattr",
        "globals",
        "locals",
        "open",
        "setattr",
        "vars",
    }
)
_REFERENCE = re.compile(r"@\w*(?:#\w*)*")  # MONAI's "@id#sub#key" references


class UntrustedConfigError(ValueError):
    """A config that names code outside the allow-list. ``findings`` lists each offending entry by config id."""

    def __init__(self, source: str, findings: list[str], allowed_prefixes: Sequence[str]) -> None:
        self.source = source
        self.findings = findings
        listing = "\n".join(f"  - {finding}" for finding in findings)
        super().__init__(
            f"{source}: {len(findings)} config entr{'y' if len(findings) == 1 else 'ies'} outside the allowed "
            f"modules {list(allowed_prefixes)}:\n{listing}\nBundle configs are code: review them, and load this "
            "bundle only if you trust its author (trust_third_party=True) or after extending allowed_prefixes."
        )


def check_config_targets(
    config: Mapping[str, Any] | Sequence[Any],
    *,
    source: str | Path = "<config>",
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
) -> None:
    """Raise when a parsed (not evaluated) bundle config names code outside ``allowed_prefixes``.

    Args:
        config: the config content, e.g. ``json.load`` of ``train.json`` or ``ConfigParser.load_config_file``.
        source: the file the config came from, named in the error.
        allowed_prefixes: module prefixes that ``_target_`` values and ``$import`` statements may use
            (``"torch."`` allows ``torch`` and ``torch.optim.AdamW``).

    Raises:
        UntrustedConfigError: one or more findings, all listed with their config ids.
    """
    findings = config_findings(config, allowed_prefixes)
    if findings:
        raise UntrustedConfigError(str(source), findings, allowed_prefixes)


def check_bundle_configs(
    bundle_dir: str | Path, *, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES
) -> list[Path]:
    """Check every config file (``.json``, ``.yaml``, ``.yml``) under ``bundle_dir/configs``.

    Returns:
        the files checked.

    Raises:
        UntrustedConfigError: findings in any file, all listed as ``<file>: <config id>: ...``.
        ValueError: a config file that does not parse.
    """
    configs = Path(bundle_dir) / "configs"
    files = sorted(path for path in configs.rglob("*") if path.suffix in CONFIG_SUFFIXES)
    findings = []
    for path in files:
        try:
            content = ConfigParser.load_config_file(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable JSON/YAML config ({err})") from err
        findings += [
            f"{path.relative_to(configs)}: {finding}" for finding in config_findings(content, allowed_prefixes)
        ]
    if findings:
        raise UntrustedConfigError(str(configs), findings, allowed_prefixes)
    return files


def config_findings(config: Mapping[str, Any] | Sequence[Any], allowed_prefixes: Sequence[str]) -> list[str]:
    """Every entry of ``config`` that names code outside ``allowed_prefixes``, one line each (empty when clean)."""
    findings = []
    for config_id, key, value in _walk(config, ""):
        if key == "_target_":
            findings += _target_findings(config_id, value, allowed_prefixes)
        elif isinstance(value, str) and value.startswith("$"):
            findings += _expression_findings(config_id, value[1:], allowed_prefixes)
    return findings


def _walk(node: Any, config_id: str) -> Iterator[tuple[str, str, Any]]:
    """``(config id, key, value)`` of every leaf and every ``_target_``, depth first."""
    if isinstance(node, Mapping):
        items = ((str(key), value) for key, value in node.items())
    elif isinstance(node, list | tuple):
        items = ((str(index), value) for index, value in enumerate(node))
    else:
        return
    for key, value in items:
        child = f"{config_id}#{key}" if config_id else key
        if key == "_target_" or not isinstance(value, Mapping | list | tuple):
            yield child, key, value
        else:
            yield from _walk(value, child)


def _allowed(module: str, allowed_prefixes: Sequence[str]) -> bool:
    return any(module == prefix.rstrip(".") or module.startswith(prefix) for prefix in allowed_prefixes)


def _target_findings(config_id: str, target: Any, allowed_prefixes: Sequence[str]) -> list[str]:
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", target):
        return [
            f"{config_id}: _target_ {target!r} is not a plain dotted name (expressions and references can be any code)"
        ]
    if "." in target:
        resolved = target
    else:
        module = _locator().get_component_module_name(target)
        if module is None:
            return [
                f"{config_id}: _target_ {target!r} is not a MONAI component; it would be looked up as a top-level name"
            ]
        resolved = f"{module[0] if isinstance(module, list) else module}.{target}"
    if _allowed(resolved, allowed_prefixes):
        return []
    return [f"{config_id}: _target_ {target!r} resolves to {resolved!r}"]


def _expression_findings(config_id: str, expression: str, allowed_prefixes: Sequence[str]) -> list[str]:
    try:
        tree = ast.parse(_REFERENCE.sub("_ref", expression.strip()), mode="exec")
    except SyntaxError as err:
        return [f"{config_id}: {_quoted(expression)} is not valid Python ({err.msg})"]
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = ["." * node.level + (node.module or "")]
        else:
            modules = []
        findings += [
            f"{config_id}: {_quoted(expression)} imports {module!r}"
            for module in modules
            if not _allowed(module, allowed_prefixes)
        ]
        if isinstance(node, ast.Name) and node.id in UNSAFE_NAMES:
            findings.append(f"{config_id}: {_quoted(expression)} uses the builtin {node.id!r}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr.endswith("__"):
            findings.append(f"{config_id}: {_quoted(expression)} reaches the dunder attribute {node.attr!r}")
    return findings


def _quoted(expression: str) -> str:
    """The ``$`` expression as written in the config, quoted."""
    return repr(f"${expression}")


@functools.cache
def _locator() -> ComponentLocator:
    """MONAI's short-name resolver, built once (it scans the imported ``monai`` modules)."""
    return ComponentLocator()
