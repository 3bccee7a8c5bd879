"""Grammar of the toy corpus: random English sentences with rule-based German and French translations.

Agreement is what makes the toy task non-trivial for a small model: German article/adjective endings by gender,
number and case (weak, mixed and strong declension), verb-second order and separable verbs; French adjective
placement, gender/number agreement, elision and "de" contractions; negation in all three languages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lexicon import (
    ANIMATES,
    COLOURS,
    NAMES,
    NUMBERS,
    PLACES,
    PREPS,
    PRONOUNS,
    SIZES,
    THINGS,
    TIMES,
    VERBS,
    Adj,
    Noun,
    Verb,
)

SUPPORTED_TGT = ("de", "fr")


DE_DEF = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
DE_INDEF = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
FR_VOWELS = tuple("aeiouyhéèêâîôœ")


@dataclass(frozen=True)
class NP:
    noun: Noun
    det: str  # def | indef | num | defnum | name | pron
    count: int = 1
    size: Adj | None = None
    colour: Adj | None = None

    @property
    def plural(self) -> bool:
        return self.count > 1


def _fr_elides(word: str) -> bool:
    return word.lower().startswith(FR_VOWELS)


def de_adj_ending(det: str, case: str, g: str, plural: bool) -> str:
    """Weak endings after der-words, mixed after ein, strong without article (plural numbers)."""
    if det in ("def", "defnum"):
        if plural or case == "dat":
            return "en"
        return "en" if (case == "acc" and g == "m") else "e"
    if det == "indef":
        if case == "dat":
            return "en"
        if case == "nom":
            return {"m": "er", "f": "e", "n": "es"}[g]
        return {"m": "en", "f": "e", "n": "es"}[g]
    return "en" if case == "dat" else "e"  # strong plural, no article


def en_np(np_: NP) -> str:
    n = np_.noun
    words: list[str] = []
    if np_.det in ("def", "defnum"):
        words.append("the")
    if np_.det in ("num", "defnum"):
        words.append(NUMBERS[np_.count][0])
    if np_.size:
        words.append(np_.size.en)
    if np_.colour:
        words.append(np_.colour.en)
    words.append(n.en_pl if np_.plural else n.en)
    if np_.det == "indef":
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    return " ".join(words)


def de_np(np_: NP, case: str) -> str:
    n = np_.noun
    g = n.de_g
    key = "pl" if np_.plural else g
    words: list[str] = []
    if np_.det in ("def", "defnum"):
        words.append(DE_DEF[case][key])
    elif np_.det == "indef":
        words.append(DE_INDEF[case][g])
    if np_.det in ("num", "defnum"):
        words.append(NUMBERS[np_.count][1])
    ending = de_adj_ending(np_.det, case, g, np_.plural)
    for adj in (np_.size, np_.colour):
        if adj:
            words.append(adj.de + ending)
    if np_.plural:
        noun = n.de_pl
        if case == "dat" and not noun.endswith(("n", "s")):
            noun += "n"
    else:
        noun = n.de + ("n" if n.de_weak and case != "nom" and not n.de.endswith("n") else "")
    words.append(noun)
    return " ".join(words)


def fr_adj_form(adj: Adj, g: str, plural: bool, next_word: str = "") -> str:
    if not plural and g == "m" and adj.fr_m_vowel and next_word and _fr_elides(next_word):
        return adj.fr_m_vowel
    return adj.fr[(2 if plural else 0) + (1 if g == "f" else 0)]


def fr_np(np_: NP, de_contract: bool = False) -> str:
    """French NP; ``de_contract`` merges a preceding 'de' with the definite article (du, de la, de l', des)."""
    n = np_.noun
    g = n.fr_g
    pl = np_.plural
    noun = n.fr_pl if pl else n.fr
    body: list[str] = []
    if np_.det in ("num", "defnum"):
        body.append(NUMBERS[np_.count][2])
    if np_.size:
        body.append(fr_adj_form(np_.size, g, pl, noun))
    body.append(noun)
    if np_.colour:
        body.append(fr_adj_form(np_.colour, g, pl))
    first = body[0]
    if np_.det in ("def", "defnum"):
        if pl:
            art = "des" if de_contract else "les"
            return " ".join([art, *body])
        if _fr_elides(first):
            return ("de l'" if de_contract else "l'") + " ".join(body)
        art = ("du" if de_contract else "le") if g == "m" else ("de la" if de_contract else "la")
        return " ".join([art, *body])
    prefix = "de " if de_contract else ""
    if np_.det == "indef":
        return prefix + " ".join(["un" if g == "m" else "une", *body])
    return prefix + " ".join(body)


@dataclass(frozen=True)
class Subject:
    en: str
    de: str
    fr: str
    person: str  # 1sg 1pl 3sg 3pl
    np: NP | None = None  # None for pronouns and names


def make_subject(rng: random.Random) -> Subject:
    r = rng.random()
    if r < 0.25:
        en, de, fr, person = rng.choice(PRONOUNS)
        return Subject(en, de, fr, person)
    if r < 0.4:
        name = rng.choice(NAMES)
        return Subject(name, name, name, "3sg")
    np_ = random_np(rng, ANIMATES, colour_p=0.25, size_p=0.35)
    return Subject(en_np(np_), de_np(np_, "nom"), fr_np(np_), "3pl" if np_.plural else "3sg", np_)


def random_np(rng: random.Random, nouns: list[Noun], colour_p: float = 0.5, size_p: float = 0.35) -> NP:
    noun = rng.choice(nouns)
    det = rng.choice(("def", "def", "indef", "indef", "num", "defnum"))
    count = rng.randint(2, 20) if det in ("num", "defnum") else 1
    size = rng.choice(SIZES) if rng.random() < size_p else None
    colour = rng.choice(COLOURS) if rng.random() < colour_p else None
    return NP(noun, det, count, size, colour)


def random_place(rng: random.Random) -> tuple[str, str, str]:
    noun, preps = rng.choice(PLACES)
    prep = rng.choice(preps)
    colour = rng.choice(COLOURS) if rng.random() < 0.2 else None
    np_ = NP(noun, "def", 1, None, colour)
    de_prep, fr_prep = PREPS[prep]
    de_obj = de_np(np_, "dat")
    if de_prep == "in" and de_obj.startswith("dem "):
        de = "im " + de_obj[4:]
    else:
        de = f"{de_prep} {de_obj}"
    fr = f"à côté {fr_np(np_, de_contract=True)}" if fr_prep == "à côté de" else f"{fr_prep} {fr_np(np_)}"
    return f"{prep} {en_np(np_)}", de, fr


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _de_finite(verb: Verb, person: str) -> str:
    return {"1sg": verb.de[0], "3sg": verb.de[1]}.get(person, verb.de[2])


def _fr_finite(forms: tuple[str, str, str, str], person: str) -> str:
    return forms[{"1sg": 0, "3sg": 1, "1pl": 2, "3pl": 3}[person]]


def _fr_clause(subj: str, finite: str, neg: bool, rest: str) -> str:
    """French subject + (ne) verb (pas) + rest, eliding je -> j' and ne -> n' before a vowel."""
    if neg:
        ne = "n'" if _fr_elides(finite) else "ne "
        head = f"{subj} {ne}{finite} pas"
    else:
        head = f"j'{finite}" if subj == "je" and _fr_elides(finite) else f"{subj} {finite}"
    return f"{head} {rest}".strip()


def sentence_svo(rng: random.Random) -> tuple[str, str, str]:
    subj = make_subject(rng)
    verb = rng.choice(VERBS)
    obj = random_np(rng, THINGS)
    place = random_place(rng) if rng.random() < 0.4 else None
    neg = place is None and obj.det in ("def", "defnum") and rng.random() < 0.3
    time_ = rng.choice(TIMES) if rng.random() < 0.25 else None

    third_sg = subj.person == "3sg"
    if neg:
        en_verb = f"{'does' if third_sg else 'do'} not {verb.en[0]}"
    else:
        en_verb = verb.en[1] if third_sg else verb.en[0]
    en = f"{subj.en} {en_verb} {en_np(obj)}" + (f" {place[0]}" if place else "")
    if time_:
        en = f"{time_[0]}, {en}"

    de_tail = [de_np(obj, "acc")]
    if place:
        de_tail.append(place[1])
    if neg:
        de_tail.append("nicht")
    if verb.de_prefix:
        de_tail.append(verb.de_prefix)
    finite = _de_finite(verb, subj.person)
    if time_:
        de = " ".join([time_[1], finite, subj.de, *de_tail])
    else:
        de = " ".join([subj.de, finite, *de_tail])

    fr = _fr_clause(subj.fr, _fr_finite(verb.fr, subj.person), neg, fr_np(obj) + (f" {place[2]}" if place else ""))
    if time_:
        fr = f"{time_[2]}, {fr}"
    return _cap(en) + ".", _cap(de) + ".", _cap(fr) + "."


def sentence_there_is(rng: random.Random) -> tuple[str, str, str]:
    obj = random_np(rng, THINGS + ANIMATES)
    if obj.det in ("def", "defnum"):
        obj = NP(obj.noun, "indef" if obj.det == "def" else "num", obj.count, obj.size, obj.colour)
    place = random_place(rng)
    time_ = rng.choice(TIMES) if rng.random() < 0.25 else None
    en = f"there {'are' if obj.plural else 'is'} {en_np(obj)} {place[0]}"
    de_core = f"{de_np(obj, 'acc')} {place[1]}"
    de = f"{time_[1]} gibt es {de_core}" if time_ else f"es gibt {de_core}"
    fr = f"il y a {fr_np(obj)} {place[2]}"
    if time_:
        en, fr = f"{time_[0]}, {en}", f"{time_[2]}, {fr}"
    return _cap(en) + ".", _cap(de) + ".", _cap(fr) + "."


def sentence_copula(rng: random.Random) -> tuple[str, str, str]:
    subj = random_np(rng, THINGS + ANIMATES, colour_p=0.3, size_p=0.3)
    if subj.det in ("indef", "num"):
        subj = NP(subj.noun, "def" if subj.det == "indef" else "defnum", subj.count, subj.size, subj.colour)
    pred = rng.choice(COLOURS + SIZES)
    while pred in (subj.size, subj.colour):
        pred = rng.choice(COLOURS + SIZES)
    place = random_place(rng) if rng.random() < 0.35 else None
    neg = rng.random() < 0.2
    pl = subj.plural
    en = f"{en_np(subj)}" + (f" {place[0]}" if place else "") + f" {'are' if pl else 'is'}"
    en += f"{' not' if neg else ''} {pred.en}"
    de = f"{de_np(subj, 'nom')}" + (f" {place[1]}" if place else "") + f" {'sind' if pl else 'ist'}"
    de += f"{' nicht' if neg else ''} {pred.de}"
    fr_subj = fr_np(subj) + (f" {place[2]}" if place else "")
    fr_pred = fr_adj_form(pred, subj.noun.fr_g, pl)
    fr_verb = ("ne sont pas" if pl else "n'est pas") if neg else ("sont" if pl else "est")
    fr = f"{fr_subj} {fr_verb} {fr_pred}"
    return _cap(en) + ".", _cap(de) + ".", _cap(fr) + "."


def make_sentence(rng: random.Random) -> tuple[str, str, str]:
    """One (en, de, fr) triple; the mix of constructions keeps word order and agreement non-trivial."""
    r = rng.random()
    if r < 0.55:
        return sentence_svo(rng)
    if r < 0.78:
        return sentence_there_is(rng)
    return sentence_copula(rng)


def generate_sentences(seed: int, total: int, exclude: set[str] | None = None) -> list[tuple[str, str, str]]:
    """``total`` distinct triples (distinct English), in a fixed order for the seed."""
    rng = random.Random(f"toy-mustc-sentences-{seed}")
    seen = set(exclude or ())
    out: list[tuple[str, str, str]] = []
    tries = 0
    while len(out) < total:
        tries += 1
        if tries > 50 * total + 1000:
            raise RuntimeError(f"grammar exhausted: only {len(out)} distinct sentences of {total} requested")
        triple = make_sentence(rng)
        if triple[0] in seen:
            continue
        seen.add(triple[0])
        out.append(triple)
    return out
