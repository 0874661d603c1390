"""Harm taxonomies and severity levels, kept as data (DESIGN §2).

The names are the exact strings of the source datasets: PKU-SafeRLHF's 19 harm
categories (in the order of its dicts) and BeaverTails' 14 category keys (the commas
are part of the keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PKU_SAFERLHF = "pku-saferlhf"
BEAVERTAILS = "beavertails"


@dataclass(frozen=True, slots=True)
class Taxonomy:
    """A named, ordered set of harm categories."""

    name: str
    categories: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    key_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.categories)})
        object.__setattr__(self, "key_set", frozenset(self.categories))

    def __contains__(self, category: object) -> bool:
        return category in self._index

    def __len__(self) -> int:
        return len(self.categories)

    def index(self, category: str) -> int:
        """Position of `category` in the taxonomy (the id used by the source data)."""
        return self._index[category]


PKU_CATEGORIES = Taxonomy(
    PKU_SAFERLHF,
    (
        "Endangering National Security",
        "Insulting Behavior",
        "Discriminatory Behavior",
        "Endangering Public Health",
        "Copyright Issues",
        "Violence",
        "Drugs",
        "Privacy Violation",
        "Economic Crime",
        "Mental Manipulation",
        "Human Trafficking",
        "Physical Harm",
        "Sexual Content",
        "Cybercrime",
        "Disrupting Public Order",
        "Environmental Damage",
        "Psychological Harm",
        "White-Collar Crime",
        "Animal Abuse",
    ),
)

BEAVERTAILS_CATEGORIES = Taxonomy(
    BEAVERTAILS,
    (
        "animal_abuse",
        "child_abuse",
        "controversial_topics,politics",
        "discrimination,stereotype,injustice",
        "drug_abuse,weapons,banned_substance",
        "financial_crime,property_crime,theft",
        "hate_speech,offensive_language",
        "misinformation_regarding_ethics,laws_and_safety",
        "non_violent_unethical_behavior",
        "privacy_violation",
        "self_harm",
        "sexually_explicit,adult_content",
        "terrorism,organized_crime",
        "violence,aiding_and_abetting,incitement",
    ),
)

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (PKU_CATEGORIES, BEAVERTAILS_CATEGORIES)}

# PKU-SafeRLHF v1 severity levels; 0 is reserved for safe responses.
SEVERITY_LEVELS: dict[int, str] = {0: "safe", 1: "minor", 2: "moderate", 3: "severe"}
MAX_SEVERITY = 3


def get_taxonomy(name: str) -> Taxonomy:
    """Return the taxonomy called `name`, or raise a KeyError listing the known ones."""
    try:
        return TAXONOMIES[name]
    except KeyError:
        known = ", ".join(sorted(TAXONOMIES))
        raise KeyError(f"unknown taxonomy {name!r}; known: {known}") from None
