"""PrOntoQA through the rule engine: a theory's sentences become rules, the query is answered by forward chaining.

A PrOntoQA problem is a small ontology in English ("Every insect is six-legged. Lepidopterans
are insects. Each spider is not six-legged. Alex is a butterfly.") and a query ("True or
false: Alex is six-legged."). `theory` reads the sentences into `logic` rules over one
entity (`insect -> six_legged`, `lepidopteran -> insect`, `spider -> ~six_legged`) and its
facts (`butterfly`); `reason` forward-chains them in the open world (what no sentence implies
stays unknown) and compares the derived value of the queried property with the query's
claim. `model_answer` is the baseline: the language model alone, shown `shots` solved
problems, answering with the likelier of " True" and " False".

Sentence forms read (any other sentence is an error naming it): `Every|Each X is [not] [a|an] Y`,
`Xs are [not] Ys`, `NAME is [not] [a|an] Y` (NAME capitalised, or a number). Plurals are made singular against the names the
theory uses in the singular ("painted ladies" → painted_lady when "painted lady" occurs),
else by the usual English endings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safealign.config import ConfigError
from safealign.reasoning.logic import Inference, Rule, RuleSet, parse_rule

_QUANTIFIED = re.compile(r"^(?:every|each)\s+(?P<x>.+?)\s+is\s+(?P<neg>not\s+)?(?:(?:a|an)\s+)?(?P<y>.+)$", re.I)
_PLURAL = re.compile(r"^(?P<x>.+?)\s+are\s+(?P<neg>not\s+)?(?P<y>.+)$", re.I)
_FACT = re.compile(r"^(?P<name>[A-Z][a-z]+|\d+)\s+is\s+(?P<neg>not\s+)?(?:(?:a|an)\s+)?(?P<y>.+)$")
_QUERY = re.compile(r"^(?:true or false:\s*)?(?P<name>[A-Z][a-z]+|\d+)\s+is\s+(?P<neg>not\s+)?(?:(?:a|an)\s+)?(?P<y>.+?)\.?$", re.I)


class ProntoQAError(ConfigError):
    """A sentence or a problem this reader does not understand; the message quotes it."""


@dataclass(frozen=True)
class Problem:
    question: str
    """The theory and the facts, as sentences."""
    query: str
    """"True or false: NAME is [not] Y."."""
    answer: bool
    hops: int
    """Rule applications on the gold chain of thought ((len(chain) − 1) / 2)."""
    key: str = ""
    shots: tuple[tuple[str, str, bool], ...] = ()
    """The problem's in-context examples: (question, query, answer)."""


def atom_of(phrase: str) -> str:
    """`six-legged` → six_legged, `painted lady` → painted_lady."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.strip().lower()).strip("_")


def _singulars(word: str) -> list[str]:
    w = word.lower()
    out = []
    if w.endswith("ies"):
        out.append(w[:-3] + "y")
    if re.search(r"(s|x|z|ch|sh)es$", w):
        out.append(w[:-2])
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        out.append(w[:-1])
    return out + [w]


def singular(phrase: str, known: set[str]) -> str:
    """The singular atom of a plural noun phrase: the last word made singular, preferring names in `known`."""
    *head, last = phrase.strip().split()
    candidates = [atom_of(" ".join([*head, s])) for s in _singulars(last)]
    return next((c for c in candidates if c in known), candidates[0])


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text.strip()) if s.strip().rstrip(".")]


def theory(question: str) -> tuple[list[Rule], dict[str, bool], str]:
    """(rules, facts about the entity, the entity's name) of a problem's sentences."""
    sentences = [s.rstrip(".") for s in _sentences(question)]
    known: set[str] = set()
    for s in sentences:  # names the theory uses in the singular
        m = _QUANTIFIED.match(s) or _FACT.match(s)
        if m:
            known |= {atom_of(m.group("y"))} | ({atom_of(m.group("x"))} if "x" in m.groupdict() else set())
    rules: list[Rule] = []
    facts: dict[str, bool] = {}
    entity = ""
    for s in sentences:
        if m := _QUANTIFIED.match(s):
            x, y = atom_of(m.group("x")), atom_of(m.group("y"))
        elif (m := _FACT.match(s)) and not s.lower().startswith(("every ", "each ")):
            name = m.group("name")
            if entity and name != entity:
                raise ProntoQAError(f"{s!r}: a second entity ({name}; the first was {entity})")
            entity = name
            facts[atom_of(m.group("y"))] = not m.group("neg")
            continue
        elif m := _PLURAL.match(s):
            x = singular(m.group("x"), known)
            y_text = m.group("y")
            y = singular(y_text, known) if atom_of(y_text) not in known and y_text.lower().endswith("s") else atom_of(y_text)
        else:
            raise ProntoQAError(f"not a sentence of a PrOntoQA theory: {s!r}")
        rules.append(parse_rule(f"{x} -> {'~' if m.group('neg') else ''}{y}", s))
    if not entity:
        raise ProntoQAError(f"no fact about an entity (NAME is a Y) in {question!r}")
    return rules, facts, entity


def parse_query(query: str) -> tuple[str, str, bool]:
    """(entity, atom, claimed value) of "True or false: NAME is [not] Y."."""
    m = _QUERY.match(query.strip())
    if not m:
        raise ProntoQAError(f"not a PrOntoQA query: {query!r}")
    return m.group("name"), atom_of(m.group("y")), not m.group("neg")


@dataclass
class Reasoned:
    answer: bool | None
    """True / False, or None when the theory leaves the queried property unknown."""
    inference: Inference
    atom: str

    def proof(self) -> list[str]:
        return self.inference.proof(self.atom)


def reason(problem: Problem, facts: dict[str, bool] | None = None) -> Reasoned:
    """Forward-chain the theory (open world) and judge the query's claim.

    `facts`: the entity's facts when they come from elsewhere (detected), in place of its
    fact sentence; only true ones are asserted.
    """
    rules, given, entity = theory(problem.question)
    name, atom, claimed = parse_query(problem.query)
    if name != entity:
        raise ProntoQAError(f"the query is about {name}, the theory about {entity}: {problem.query!r}")
    asserted = given if facts is None else {k: True for k, v in facts.items() if v}
    inference = RuleSet(rules, world="open").infer(asserted)
    value = inference.values.get(atom)
    return Reasoned(None if value is None else value == claimed, inference, atom)


def _answer(value: Any, where: str) -> bool:
    if value in ("True", "False"):
        return value == "True"
    raise ProntoQAError(f"{where}: answer must be 'True' or 'False', got {value!r}")


def load_prontoqa(path: str | Path) -> list[Problem]:
    """The problems of a PrOntoQA file ({key: {in_context_example0…, test_example}}), in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProntoQAError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ProntoQAError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ProntoQAError(f"{path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ProntoQAError(f"{path}: expected an object of problems, got {type(data).__name__}")
    problems = []
    for key, item in data.items():
        where = f"{path}: {key}"
        try:
            test = item["test_example"]
            shots = tuple((_text(e, "question", f"{where}.{name}"), _text(e, "query", f"{where}.{name}"),
                           _answer(e["answer"], f"{where}.{name}"))
                          for name, e in sorted(item.items()) if name.startswith("in_context_example"))
            chain = test["chain_of_thought"]
            if not isinstance(chain, list) or len(chain) % 2 == 0:
                raise ProntoQAError(f"{where}.test_example: chain_of_thought must be a list of 1 + 2·hops steps, got {chain!r:.80}")
            problems.append(Problem(_text(test, "question", f"{where}.test_example"), _text(test, "query", f"{where}.test_example"),
                                    _answer(test["answer"], f"{where}.test_example"), (len(chain) - 1) // 2, key, shots))
        except (KeyError, TypeError) as exc:
            raise ProntoQAError(f"{where}: missing field {exc}") from None
    if not problems:
        raise ProntoQAError(f"{path}: no problems")
    return problems


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item[name]
    if not isinstance(value, str):
        raise ProntoQAError(f"{where}: {name} must be text, got {type(value).__name__}")
    return value


def few_shot_prompt(problem: Problem, shots: int) -> str:
    """`shots` solved in-context problems, then the problem with "A:" to complete."""
    lines = [f"Q: {q} {query}\nA: {'True' if a else 'False'}\n" for q, query, a in problem.shots[:shots]]
    return "\n".join([*lines, f"Q: {problem.question} {problem.query}\nA:"])


def model_answer(model: Any, tokenizer: Any, problem: Problem, shots: int = 2) -> bool:
    """The model alone: is " True" likelier than " False" after the few-shot prompt?"""
    import torch

    prompt = tokenizer(few_shot_prompt(problem, shots)).input_ids
    options = [tokenizer(" True", add_special_tokens=False).input_ids, tokenizer(" False", add_special_tokens=False).input_ids]
    with torch.no_grad():
        if all(len(ids) == 1 for ids in options):
            logits = model(torch.tensor([prompt], device=model.device)).logits[0, -1].float()
            return bool(logits[options[0][0]] > logits[options[1][0]])
        scores = []
        for ids in options:  # a multi-token option: score prompt + option whole
            logp = torch.log_softmax(model(torch.tensor([prompt + ids], device=model.device)).logits[0].float(), -1)
            scores.append(sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)))
    return scores[0] > scores[1]


# --- ActivationReasoning: the entity's type detected in the policy's activations -----------------

def fact_of(question: str) -> tuple[str, str, str]:
    """(the theory without the entity's fact, the fact sentence, the fact's atom) of a problem's question."""
    _, facts, entity = theory(question)
    sentences = _sentences(question)
    fact = next(s for s in sentences if _FACT.match(s.rstrip(".")) and s.startswith(entity + " "))
    if len(facts) != 1 or not next(iter(facts.values())):
        raise ProntoQAError(f"activation reasoning reads one positive fact ('NAME is a TYPE.') per problem: {question!r:.120}")
    return " ".join(s for s in sentences if s != fact), fact, next(iter(facts))


def fact_conversation(question: str) -> tuple[list[dict[str, str]], str]:
    """The theory as the prompt, the fact sentence as the answer: the fact is read in its context (answer scope)."""
    rest, fact, _ = fact_of(question)
    return [{"role": "user", "content": rest}], fact


def fit_type_concepts(sae: Any, acts: Any, types: list[str], split: np.ndarray, latents: int = 8,
                      min_positives: int = 10, seed: int = 0) -> dict[str, Any]:
    """One concept per entity type (one against the rest) from the fact sentences' codes; types too rare are left out."""
    from safealign.reasoning.concepts import fit_concept, pooled_codes

    pooled = pooled_codes(sae, acts, "answer")
    labels = np.array(types)
    concepts = {}
    for name in sorted(set(types)):
        y = labels == name
        if min(int((y & (split == part)).sum()) for part in ("train", "validation")) >= min_positives:
            concepts[name] = fit_concept(name, "answer", pooled, y, split, "auto", latents, seed)
    return concepts


def reason_from(problem: Problem, facts: dict[str, bool]) -> Reasoned:
    """`reason` with the entity's facts given (detected), not read from the fact sentence."""
    return reason(problem, facts)


def activation_reasoning(model: Any, tokenizer: Any, sae: Any, layer: int, problems: list[Problem],
                         latents: int = 8, seed: int = 0,
                         batch_size: int = 16) -> tuple[list[Reasoned], list[dict[str, bool]], dict[str, Any]]:
    """AR on PrOntoQA: type concepts fitted on the in-context examples' facts, detected in each test fact, then the rules.

    The dictionary never sees a test example: it is fitted on the problems' in-context
    examples (each fact sentence read after its own theory; any equal to a test question
    left out), split train/validation by question; the test fact is read after the test theory and its detected types become the
    entity's facts. Returns the answers, the detected propositions and the dictionary's figures.
    """
    from safealign.reasoning.activations import collect_activations
    from safealign.reasoning.concepts import ConceptDictionary, split_of

    tests = {p.question for p in problems}
    shots = sorted({q for p in problems for q, _, _ in p.shots if q not in tests})
    if not shots:
        raise ProntoQAError("activation reasoning needs in-context examples to fit the type concepts on")
    record = lambda questions: collect_activations(model, tokenizer, [fact_conversation(q) for q in questions], layer,  # noqa: E731
                                                   batch_size, None, 512, 32, progress=False)
    split = np.array([split_of(q, 0.25, 0.0, seed) for q in shots])
    concepts = fit_type_concepts(sae, record(shots), [fact_of(q)[2] for q in shots], split, latents, seed=seed)
    if not concepts:
        raise ProntoQAError("no entity type has enough in-context examples to fit a concept on")
    dictionary = ConceptDictionary(sae, concepts, "", layer)
    found = dictionary.detect(record([p.question for p in problems]))
    answers = [reason_from(p, props) for p, props in zip(problems, found)]
    exact = [{k for k, v in props.items() if v} == {fact_of(p.question)[2]} for p, props in zip(problems, found)]
    figures = {"types": sorted(concepts), "fit_examples": len(shots), "type_detection_exact": sum(exact) / len(exact),
               "validation_f1": {n: c.validation.get("f1") for n, c in concepts.items()}}
    return answers, found, figures


@dataclass(kw_only=True)
class ProntoQAConfig:
    """`safealign reason prontoqa`: answer PrOntoQA problems with the rule engine (and, with `model`, the model alone)."""

    data: str
    """A PrOntoQA file: {key: {in_context_example0…, test_example: {question, query, chain_of_thought, answer}}}."""
    model: str | None = None
    """Also answer with this causal LM alone (few-shot, the likelier of " True" / " False"): an offline alias, a folder or a hub id."""
    shots: int = 2
    """In-context examples shown to the model."""
    sae: str | None = None
    """An SAE folder: also answer with ActivationReasoning (the entity's type detected at the SAE's layer of its model, or of --model)."""
    latents: int = 8
    """Latents per type concept (with --sae)."""
    limit: int | None = None
    """Only the first N problems."""
    out: str = "runs/prontoqa.jsonl"
    """JSON Lines: {key, hops, answer, reasoner, model, proof}."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        from safealign.config import at_least_one
        from safealign.inference.settings import validate_device

        at_least_one(self, "limit", "latents")
        if self.shots < 0:
            raise ConfigError(f"shots: must not be negative, got {self.shots}")
        validate_device(self.device)


def accuracy_by_hops(rows: list[dict[str, Any]], answerers: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{hops or "all": {n, <answerer>: accuracy}}; an unanswered problem (None) counts as wrong."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["hops"]), []).append(row)
    groups = {h: groups[h] for h in sorted(groups, key=int)}
    groups["all"] = rows
    return {h: {"n": len(g), **{a: sum(r[a] is r["answer"] for r in g) / len(g) for a in answerers}} for h, g in groups.items() if g}


def run_prontoqa(cfg: ProntoQAConfig) -> dict[str, Any]:
    from safealign.inference.generate import load_generator

    problems = load_prontoqa(cfg.data)[: cfg.limit]
    loaded: dict[str, tuple[Any, Any]] = {}

    def policy(name: str) -> tuple[Any, Any]:
        if name not in loaded:
            loaded[name] = load_generator(name, device=cfg.device)
        return loaded[name]

    detected: list[dict[str, bool]] | None = None
    ar: list[Reasoned] | None = None
    figures: dict[str, Any] = {}
    if cfg.sae:
        from safealign.reasoning.sae import load_sae

        sae = load_sae(cfg.sae)
        name, layer = cfg.model or sae.cfg.meta.get("model"), sae.cfg.meta.get("layer")
        if not name or layer is None:
            raise ConfigError(f"sae: {cfg.sae} does not say which model and layer it reads; give --model (its layer is in cfg.json)")
        ar, detected, figures = activation_reasoning(*policy(name), sae, int(layer), problems, cfg.latents)
    rows = []
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for i, p in enumerate(problems):
            reasoned = reason(p)
            row = {"key": p.key, "hops": p.hops, "answer": p.answer, "reasoner": reasoned.answer,
                   "model": model_answer(*policy(cfg.model), p, cfg.shots) if cfg.model else None, "proof": reasoned.proof()}
            if ar is not None and detected is not None:
                row.update({"activation_reasoning": ar[i].answer, "detected": [k for k, v in detected[i].items() if v],
                            "ar_proof": ar[i].proof()})
            rows.append(row)
            f.write(json.dumps(row) + "\n")
    answerers = ("reasoner", *(("model",) if cfg.model else ()), *(("activation_reasoning",) if ar is not None else ()))
    return {"accuracy": accuracy_by_hops(rows, answerers), "unanswered": sum(r["reasoner"] is None for r in rows),
            "activation_reasoning": figures, "out": str(out)}
