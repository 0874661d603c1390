"""Propositional logic over detected concepts: a rule parser, forward chaining, proofs, three values.

Formulas are built from atoms (concept names such as `weapons`, and steering targets written
`steer(refusal)`) with Not / And / Or / Xor / Implies, in ASCII, words or symbols:

    ~ ! not ¬      & and ∧      | or ∨      ^ xor ⊕      -> => implies →

Precedence, loosest first: implication (right-associative), or, xor, and, not. A *rule* is an
implication whose conclusion is a literal or a conjunction of literals
(`weapons & instructions_requested -> harmful_request`, `harmful_request -> steer(refusal)`,
`asks_for_medical_advice -> ~harmful_request`).

`forward_chain` applies every rule whose premise holds, adds its conclusions and repeats until
nothing changes (a fixed point). In the closed world an atom nobody asserted is false; in the
open world it is unknown and the premise is judged with Kleene's three-valued logic, so a rule
fires only when its premise is *known* true. Every derived literal keeps its proof: the rule
and the values of the premise's atoms when it fired. Two rules concluding opposite values of
one atom are a conflict: the first value stays (a given fact always beats a derived one) and
the conflict is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from safealign.config import ConfigError

Value = bool | None  # None: unknown (open world)
World = Literal["closed", "open"]


class RuleError(ConfigError):
    """A rule that does not parse, or a rule file that is not what it should be; the message says where."""


@dataclass(frozen=True)
class Atom:
    name: str


@dataclass(frozen=True)
class Not:
    arg: Formula


@dataclass(frozen=True)
class And:
    args: tuple[Formula, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Formula, ...]


@dataclass(frozen=True)
class Xor:
    left: Formula
    right: Formula


@dataclass(frozen=True)
class Implies:
    premise: Formula
    conclusion: Formula


Formula = Atom | Not | And | Or | Xor | Implies

_WORDS = {"not": "~", "and": "&", "or": "|", "xor": "^", "implies": "->"}
_SYMBOLS = {"¬": "~", "!": "~", "∧": "&", "∨": "|", "⊕": "^", "→": "->", "=>": "->"}
_TOKEN = re.compile(r"\s*(?:(->|=>|[()~!&|^¬∧∨⊕→])|(steer\s*\(\s*[A-Za-z_][\w.:-]*\s*\))|([A-Za-z_][\w.:-]*))")


def steer_atom(target: str) -> str:
    """The atom that says "steer towards `target`"."""
    return f"steer({target})"


def steer_target(atom: str) -> str | None:
    """`refusal` for `steer(refusal)`; None for any other atom."""
    match = re.fullmatch(r"steer\((.+)\)", atom)
    return match.group(1) if match else None


def _tokens(text: str) -> list[str]:
    out, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise RuleError(f"cannot read {text[position:].strip()[:30]!r} at character {position + 1} of {text!r}")
        symbol, steer, word = match.groups()
        if symbol:
            out.append(_SYMBOLS.get(symbol, symbol))
        elif steer:
            out.append(steer_atom(re.sub(r"steer\s*\(\s*|\s*\)", "", steer)))
        else:
            out.append(_WORDS.get(word.lower(), word))
        position = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.items, self.at = text, _tokens(text), 0

    def parse(self) -> Formula:
        if not self.items:
            raise RuleError(f"empty formula: {self.text!r}")
        formula = self.implication()
        if self.at != len(self.items):
            raise RuleError(f"unexpected {self.items[self.at]!r} in {self.text!r}")
        return formula

    def peek(self) -> str | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise RuleError(f"formula ends too early: {self.text!r}")
        self.at += 1
        return token

    def implication(self) -> Formula:
        left = self.binary("|")
        if self.peek() == "->":
            self.take()
            return Implies(left, self.implication())
        return left

    def binary(self, op: str) -> Formula:
        lower = {"|": "^", "^": "&", "&": None}[op]
        parts = [self.binary(lower) if lower else self.unary()]
        while self.peek() == op:
            self.take()
            parts.append(self.binary(lower) if lower else self.unary())
        if len(parts) == 1:
            return parts[0]
        if op == "^":
            formula = parts[0]
            for part in parts[1:]:
                formula = Xor(formula, part)
            return formula
        return (Or if op == "|" else And)(tuple(parts))

    def unary(self) -> Formula:
        token = self.take()
        if token == "~":
            return Not(self.unary())
        if token == "(":
            inner = self.implication()
            if self.take() != ")":
                raise RuleError(f"missing ')' in {self.text!r}")
            return inner
        if token in {")", "&", "|", "^", "->"}:
            raise RuleError(f"unexpected {token!r} in {self.text!r}")
        return Atom(token)


def parse(text: str) -> Formula:
    """The formula in `text`; RuleError names what could not be read."""
    return _Parser(text).parse()


def atoms(formula: Formula) -> set[str]:
    """Every atom the formula mentions."""
    if isinstance(formula, Atom):
        return {formula.name}
    if isinstance(formula, Not):
        return atoms(formula.arg)
    if isinstance(formula, And | Or):
        return set().union(*(atoms(a) for a in formula.args))
    if isinstance(formula, Xor):
        return atoms(formula.left) | atoms(formula.right)
    return atoms(formula.premise) | atoms(formula.conclusion)


def evaluate(formula: Formula, values: dict[str, bool], world: World = "closed") -> Value:
    """The formula's value: closed world, a missing atom is False; open world, it is unknown (Kleene's logic)."""
    if isinstance(formula, Atom):
        return values.get(formula.name, None if world == "open" else False)
    if isinstance(formula, Not):
        inner = evaluate(formula.arg, values, world)
        return None if inner is None else not inner
    if isinstance(formula, And):
        found = [evaluate(a, values, world) for a in formula.args]
        return False if False in found else (None if None in found else True)
    if isinstance(formula, Or):
        found = [evaluate(a, values, world) for a in formula.args]
        return True if True in found else (None if None in found else False)
    if isinstance(formula, Xor):
        left, right = evaluate(formula.left, values, world), evaluate(formula.right, values, world)
        return None if left is None or right is None else left != right
    premise, conclusion = evaluate(formula.premise, values, world), evaluate(formula.conclusion, values, world)
    if premise is False or conclusion is True:
        return True
    return False if premise is True and conclusion is False else None


@dataclass(frozen=True)
class Rule:
    """`premise -> conclusion`, the conclusion a conjunction of literals (atom, value)."""

    premise: Formula
    conclusion: tuple[tuple[str, bool], ...]
    text: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.text}" if self.name else self.text


def _literals(formula: Formula, text: str) -> tuple[tuple[str, bool], ...]:
    if isinstance(formula, Atom):
        return ((formula.name, True),)
    if isinstance(formula, Not) and isinstance(formula.arg, Atom):
        return ((formula.arg.name, False),)
    if isinstance(formula, And):
        return tuple(lit for part in formula.args for lit in _literals(part, text))
    raise RuleError(f"a rule concludes literals joined by 'and' (a, ~a, a & b); not the conclusion of {text!r}")


def parse_rule(text: str, name: str | None = None) -> Rule:
    """A rule from `premise -> conclusion` text."""
    formula = parse(text)
    if not isinstance(formula, Implies):
        raise RuleError(f"a rule needs '->' (premise -> conclusion): {text!r}")
    return Rule(formula.premise, _literals(formula.conclusion, text), text.strip(), name)


@dataclass(frozen=True)
class Derivation:
    """How a literal was derived: the rule, the premise's atoms as they stood, the pass it fired in."""

    atom: str
    value: bool
    rule: Rule
    support: tuple[tuple[str, Value], ...]
    step: int


@dataclass
class Inference:
    """The fixed point: every literal known, how each derived one came about, and the conflicts."""

    values: dict[str, bool]
    derived: dict[str, Derivation] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    passes: int = 0
    world: World = "closed"

    @property
    def steer_targets(self) -> list[str]:
        """The targets of every `steer(target)` that holds, sorted."""
        return sorted(t for atom, value in self.values.items() if value and (t := steer_target(atom)))

    @property
    def fired(self) -> list[str]:
        """The rules that concluded something, in the order they first did."""
        seen: list[str] = []
        for d in sorted(self.derived.values(), key=lambda d: d.step):
            if str(d.rule) not in seen:
                seen.append(str(d.rule))
        return seen

    def proof(self, atom: str, depth: int = 0) -> list[str]:
        """Lines of the proof of `atom` (given facts are leaves), indented by depth."""
        pad = "  " * depth
        if atom in self.derived:
            d = self.derived[atom]
            lines = [f"{pad}{_literal(atom, d.value)}  by  {d.rule}"]
            for name, value in d.support:
                lines += self.proof(name, depth + 1) if name in self.derived else [f"{pad}  {_literal(name, value)}  (given)"]
            return lines
        value = self.values.get(atom)
        return [f"{pad}{_literal(atom, value)}  ({'given' if value is not None else 'unknown'})"]


def _literal(atom: str, value: Value) -> str:
    return atom if value else (f"~{atom}" if value is False else f"?{atom}")


def forward_chain(rules: list[Rule], facts: dict[str, bool], world: World = "closed", max_passes: int = 1000) -> Inference:
    """Apply `rules` to `facts` until nothing new follows; see the module text for the semantics."""
    result = Inference(dict(facts), world=world)
    for step in range(1, max_passes + 1):
        changed = False
        for rule in rules:
            if evaluate(rule.premise, result.values, world) is not True:
                continue
            support = tuple((a, result.values.get(a)) for a in sorted(atoms(rule.premise)))
            for atom, value in rule.conclusion:
                known = result.values.get(atom)
                if known is None:
                    result.values[atom] = value
                    result.derived[atom] = Derivation(atom, value, rule, support, step)
                    changed = True
                elif known != value:
                    note = f"{rule} concludes {_literal(atom, value)}, but {_literal(atom, known)} " + (
                        f"was derived by {result.derived[atom].rule}" if atom in result.derived else "was given")
                    if note not in result.conflicts:
                        result.conflicts.append(note)
        result.passes = step
        if not changed:
            return result
    raise RuleError(f"no fixed point after {max_passes} passes")


@dataclass
class RuleSet:
    """Rules with how to apply them: the world, the steering factor, per-target factors."""

    rules: list[Rule]
    world: World = "closed"
    factor: float = 0.5
    factors: dict[str, float] = field(default_factory=dict)
    source: str = "<rules>"

    def infer(self, facts: dict[str, bool]) -> Inference:
        return forward_chain(self.rules, facts, self.world)

    def factor_for(self, target: str) -> float:
        return self.factors.get(target, self.factor)

    @property
    def atoms(self) -> set[str]:
        found: set[str] = set()
        for rule in self.rules:
            found |= atoms(rule.premise) | {a for a, _ in rule.conclusion}
        return found


def load_rules(path: str | Path) -> RuleSet:
    """A rule file: YAML with `rules:` (strings, or {name, if, then}), optional `world`, `factor`, `factors`."""
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise RuleError(f"{source}: cannot read the rule file ({error})") from None
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise RuleError(f"{source}: expected a mapping with a non-empty 'rules' list")
    unknown = set(data) - {"rules", "world", "factor", "factors"}
    if unknown:
        raise RuleError(f"{source}: unknown key(s) {sorted(unknown)} (rules, world, factor, factors)")
    rules = []
    for i, item in enumerate(data["rules"], 1):
        try:
            rules.append(_rule_item(item))
        except RuleError as error:
            raise RuleError(f"{source}: rule {i}: {error}") from None
    world = data.get("world", "closed")
    if world not in ("closed", "open"):
        raise RuleError(f"{source}: world: 'closed' or 'open', got {world!r}")
    factors = data.get("factors") or {}
    for key, value in [("factor", data.get("factor", 0.5)), *((f"factors.{k}", v) for k, v in factors.items())]:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise RuleError(f"{source}: {key}: a number, got {value!r}")
    return RuleSet(rules, world, float(data.get("factor", 0.5)), {k: float(v) for k, v in factors.items()}, source)


def _rule_item(item: Any) -> Rule:
    if isinstance(item, str):
        return parse_rule(item)
    if isinstance(item, dict) and {"if", "then"} <= set(item) and set(item) <= {"if", "then", "name"}:
        return parse_rule(f"({item['if']}) -> {item['then']}", item.get("name"))
    raise RuleError(f"a string 'premise -> conclusion' or a mapping with 'if' and 'then' (and 'name'), got {item!r}")
