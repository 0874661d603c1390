"""PrOntoQA through the rule engine: sentences → rules by hand, answers with proofs, the file reader, the model baseline."""

from __future__ import annotations

import json

import pytest
import torch

from safealign.reasoning.prontoqa import (
    Problem,
    ProntoQAError,
    fact_of,
    few_shot_prompt,
    load_prontoqa,
    model_answer,
    parse_query,
    reason,
    singular,
    theory,
)

THEORY = ("Every wumpus is a jompus. Jompuses are not luminous. Each painted lady is a wumpus. "
          "Butterflies are six-legged. Every jompus is nervous. Alex is a painted lady.")


def test_sentences_become_rules_and_facts():
    rules, facts, entity = theory(THEORY)
    assert entity == "Alex" and facts == {"painted_lady": True}
    assert [(r.name, r.conclusion) for r in rules] == [
        ("Every wumpus is a jompus", (("jompus", True),)),
        ("Jompuses are not luminous", (("luminous", False),)),
        ("Each painted lady is a wumpus", (("wumpus", True),)),
        ("Butterflies are six-legged", (("six_legged", True),)),
        ("Every jompus is nervous", (("nervous", True),)),
    ]
    assert [r.text for r in rules] == ["wumpus -> jompus", "jompus -> ~luminous", "painted_lady -> wumpus", "butterfly -> six_legged",
                                      "jompus -> nervous"]


def test_plurals_prefer_the_theory_s_own_names():
    assert singular("painted ladies", {"painted_lady"}) == "painted_lady"
    assert singular("wumpuses", {"wumpus"}) == "wumpus"
    assert singular("Mersenne primes", set()) == "mersenne_prime"
    assert singular("luminous", set()) == "luminous"  # an adjective in -us keeps its s
    assert singular("foxes", set()) == "fox"


def test_answers_with_a_proof_and_unknown_in_the_open_world():
    yes = reason(Problem(THEORY, "True or false: Alex is not luminous.", True, 3))
    assert yes.answer is True
    assert yes.proof() == ["~luminous  by  Jompuses are not luminous: jompus -> ~luminous",
                           "  jompus  by  Every wumpus is a jompus: wumpus -> jompus",
                           "    wumpus  by  Each painted lady is a wumpus: painted_lady -> wumpus",
                           "      painted_lady  (given)"]
    assert reason(Problem(THEORY, "True or false: Alex is luminous.", False, 3)).answer is False
    # nothing says whether a painted lady is six-legged (only butterflies are): unknown, not false
    assert reason(Problem(THEORY, "True or false: Alex is six-legged.", True, 1)).answer is None
    assert parse_query("True or false: 31 is not prime.") == ("31", "prime", False)


def test_unreadable_sentences_and_queries_are_named():
    with pytest.raises(ProntoQAError, match="'Some wumpuses might be red'"):
        theory("Every wumpus is red. Some wumpuses might be red. Alex is a wumpus.")
    with pytest.raises(ProntoQAError, match="second entity"):
        theory("Every wumpus is red. Alex is a wumpus. Fae is a wumpus.")
    with pytest.raises(ProntoQAError, match="not a PrOntoQA query"):
        parse_query("Is Alex red?")
    with pytest.raises(ProntoQAError, match="about Fae"):
        reason(Problem(THEORY, "True or false: Fae is nervous.", True, 1))


def _item(question: str, query: str, answer: str, chain: int) -> dict:
    return {"question": question, "query": query, "answer": answer, "chain_of_thought": ["step"] * chain}


def test_the_file_reader_counts_hops_and_names_bad_items(tmp_path):
    good = {"example1": {"in_context_example0": _item("Every cat is red. Max is a cat.", "True or false: Max is red.", "True", 3),
                         "test_example": _item(THEORY, "True or false: Alex is nervous.", "True", 7)}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(good))
    [p] = load_prontoqa(path)
    assert (p.hops, p.answer, p.key, len(p.shots)) == (3, True, "example1", 1)
    assert reason(p).answer is True
    assert few_shot_prompt(p, 1) == ("Q: Every cat is red. Max is a cat. True or false: Max is red.\nA: True\n\n"
                                     f"Q: {THEORY} True or false: Alex is nervous.\nA:")
    good["example1"]["test_example"]["answer"] = "Yes"
    path.write_text(json.dumps(good))
    with pytest.raises(ProntoQAError, match=r"example1.test_example: answer must be 'True' or 'False', got 'Yes'"):
        load_prontoqa(path)
    for field, value, message in (("question", 7, "question must be text, got int"),
                                  ("chain_of_thought", [], "chain_of_thought must be a list of 1 \\+ 2·hops steps")):
        broken = json.loads(json.dumps(good))
        broken["example1"]["test_example"]["answer"] = "True"
        broken["example1"]["test_example"][field] = value
        path.write_text(json.dumps(broken))
        with pytest.raises(ProntoQAError, match=message):
            load_prontoqa(path)
    path.write_text("{}")
    with pytest.raises(ProntoQAError, match="no problems"):
        load_prontoqa(path)
    with pytest.raises(ProntoQAError, match="one positive fact"):
        fact_of("Every cat is red. Max is not a cat.")
    del good["example1"]["test_example"]["query"]
    path.write_text(json.dumps(good))
    with pytest.raises(ProntoQAError, match="example1: missing field 'query'"):
        load_prontoqa(path)


class _Scripted(torch.nn.Module):
    """A 'model' whose next-token logits favour one token id everywhere, or (chain) the id after the current one."""

    def __init__(self, favoured: int | None = None, vocab: int = 64) -> None:
        super().__init__()
        self.favoured, self.vocab = favoured, vocab
        self.device = torch.device("cpu")

    def forward(self, ids, **_):
        logits = torch.zeros(ids.size(0), ids.size(1), self.vocab)
        if self.favoured is None:
            logits.scatter_(-1, ((ids + 1) % self.vocab).unsqueeze(-1), 5.0)
        else:
            logits[..., self.favoured] = 5.0
        return type("Out", (), {"logits": logits})()


class _Tok:
    def __init__(self, table):
        self.table = table

    def __call__(self, text, add_special_tokens=True):
        ids = self.table.get(text, [1, 2, 3])
        return type("Enc", (), {"input_ids": list(ids)})()


def test_the_model_baseline_compares_true_with_false():
    p = Problem(THEORY, "True or false: Alex is nervous.", True, 3)
    single = _Tok({" True": [7], " False": [9]})
    assert model_answer(_Scripted(7), single, p, 0) is True
    assert model_answer(_Scripted(9), single, p, 0) is False
    # multi-token options are scored whole: " False" = [9, 9] loses to " True" = [7] unless 9 is favoured
    multi = _Tok({" True": [7], " False": [9, 9]})
    assert model_answer(_Scripted(9), multi, p, 0) is False
    assert model_answer(_Scripted(7), multi, p, 0) is True
    # the prompt ends in 3, the chain model favours 4 then 5: " True" = [4, 5] follows it, " False" = [4, 9] breaks at
    # its second token, so scoring the first token only (a tie) or reading the wrong position would not say True
    chain = _Tok({" True": [4, 5], " False": [4, 9]})
    assert model_answer(_Scripted(), chain, p, 0) is True
    assert model_answer(_Scripted(), _Tok({" True": [4, 9], " False": [4, 5]}), p, 0) is False


def test_prontoqa_cli_with_the_model_baseline(tmp_path):
    from conftest import run_cli
    from tiny import tiny_llama

    problems = {f"example{i}": {"in_context_example0": _item("Every cat is red. Max is a cat.", "True or false: Max is red.", "True", 3),
                                "test_example": _item(THEORY, f"True or false: Alex is {'not ' * (i % 2)}nervous.",
                                                      "True" if i % 2 == 0 else "False", 3 + 2 * (i % 3))} for i in range(6)}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(problems))
    out = tmp_path / "answers.jsonl"
    proc = run_cli("reason", "prontoqa", "--data", str(path), "--model", str(tiny_llama(tmp_path / "m")), "--shots", "1",
                   "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["reasoner"] is r["answer"] for r in rows) and all(r["model"] in (True, False) for r in rows)
    assert [r["hops"] for r in rows] == [1, 2, 3, 1, 2, 3] and rows[0]["proof"][-1].strip() == "painted_lady  (given)"
    assert "PrOntoQA accuracy by hops" in proc.stdout and "unanswered by the reasoner" in proc.stdout
    from safealign.reasoning.sae import SAEConfig, TopKSAE

    TopKSAE(SAEConfig(d_in=32, num_latents=64, k=4, meta={"model": str(tmp_path / "m"), "layer": 1})).save(tmp_path / "sae")
    few = run_cli("reason", "prontoqa", "--data", str(path), "--sae", str(tmp_path / "sae"), "--device", "cpu", "--out", str(out))
    assert few.returncode == 1 and "no entity type has enough in-context examples" in few.stderr
    (tmp_path / "bad.json").write_text("{\n  oops")
    bad = run_cli("reason", "prontoqa", "--data", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and "bad.json:2: not JSON" in bad.stderr


def test_activation_reasoning_detects_the_type_and_applies_the_rules(tmp_path):
    """On a tiny random Llama with a random SAE: types fitted on in-context facts only, detected in test facts, rules applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tiny import tiny_llama

    from safealign.reasoning.prontoqa import activation_reasoning, reason_from
    from safealign.reasoning.sae import SAEConfig, TopKSAE

    torch.manual_seed(0)
    folder = tiny_llama(tmp_path / "m")
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    sae = TopKSAE(SAEConfig(d_in=model.config.hidden_size, num_latents=64, k=8, meta={"model": str(folder), "layer": 1}))
    rules = "Every wumpus is red. Every zumpus is not red. "
    names = ["Alex", "Fae", "Max", "Rex", "Sam", "Sally", "Wren", "Polly", "Stella", "Tom"]

    def item(name, kind, claim):
        return Problem(f"{rules}{name} is a {kind}.", f"True or false: {name} is red.", claim, 1)

    shots = tuple((item(f"{n}{k}", kind, True).question, "", True) for n in names for k in "abcdefgh" for kind in ("wumpus", "zumpus"))
    shots += ((item("Zed", "wumpus", True).question, "", True),)  # a test question among the examples: never fitted on
    problems = [Problem(item("Zed", "wumpus", True).question, "True or false: Zed is red.", True, 1, "p0", shots),
                Problem(item("Zed", "zumpus", False).question, "True or false: Zed is red.", False, 1, "p1", shots)]
    assert fact_of(problems[0].question) == (rules.strip(), "Zed is a wumpus.", "wumpus")
    answers, found, figures = activation_reasoning(model, tok, sae, 1, problems, latents=4)
    assert figures["types"] == ["wumpus", "zumpus"] and figures["fit_examples"] == 160
    assert all(set(props) == {"wumpus", "zumpus"} for props in found)
    for p, props, answer in zip(problems, found, answers):  # the answer is the rules applied to what was detected
        assert answer.answer == reason_from(p, props).answer
    assert reason_from(problems[0], {"wumpus": True, "zumpus": False}).answer is True
    assert reason_from(problems[1], {"zumpus": True}).answer is False and reason_from(problems[1], {}).answer is None
