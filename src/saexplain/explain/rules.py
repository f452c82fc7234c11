"""What a final explanation may be, checked mechanically (no LLM): clean text, one specific phrase, never a copied
exemplar, never the negative case. Every explainer's description passes `clean_text`; SAGE's conclusion is checked
with `conclusion_problems` and redone once, or replaced by its best measured candidate."""

from __future__ import annotations

import re

MAX_WORDS = 15
COPY_RUN = 5  # this many consecutive words of an exemplar inside a conclusion = copied text

_EDGE = " \t\n{}[],:;"
_NEGATIVE = re.compile(r"\b(should|does|do|will|would|must)\s+not\s+(fire|activate|respond)|\bnot\s+fire\b|"
                       r"\bnever\s+fires?\b|\bdoesn'?t\s+(fire|activate)|\bsilent\s+on\b", re.IGNORECASE)


_NOTATION = re.compile(r"\bH\d+\b|\[(ACTIVE|CONFIRMED|REFUTED|REFINED)\]")


def clean_text(text: str) -> str:
    """An explanation as clean text: one line, no stray JSON punctuation at its ends (a trailing `}` or `"` left
    by a reply's structure), no leading 'Explanation:' label; quotes inside the text are kept."""
    t = " ".join(str(text).split())
    t = re.sub(r'^(?:"?(?:explanation|description|label)"?\s*:\s*)', "", t, flags=re.IGNORECASE)
    prev = None
    while prev != t:
        prev = t
        t = t.strip(_EDGE)
        if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`" and t.count(t[0]) == 2:
            t = t[1:-1]  # the whole text quoted
        if t.count('"') % 2:  # an unbalanced quote at an end is the reply's, not the text's
            if t.endswith('"'):
                t = t[:-1]
            elif t.startswith('"'):
                t = t[1:]
    return t


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def copied_from(text: str, exemplars: list[str], run: int = COPY_RUN) -> str | None:
    """The exemplar whose `run` consecutive words appear in `text` (a copied example sentence), else None."""
    words = _words(text)
    grams = {tuple(words[i:i + run]) for i in range(len(words) - run + 1)}
    if not grams:
        return None
    for ex in exemplars:
        ew = _words(ex)
        if any(tuple(ew[i:i + run]) in grams for i in range(len(ew) - run + 1)):
            return ex
    return None


def conclusion_problems(text: str, exemplars: list[str], negative_case: str | None = None,
                        max_words: int = MAX_WORDS) -> list[str]:
    """Why `text` cannot be a final explanation (empty: it can): too long or cut off, exemplar markers or a
    copied exemplar sentence, the negative case or a description of what does not fire."""
    problems = []
    words = text.split()
    if not words:
        return ["empty"]
    if len(words) > max_words:
        problems.append(f"{len(words)} words (at most {max_words}: one specific phrase)")
    if "<<" in text or ">>" in text:
        problems.append("contains the exemplars' <<markers>>")
    if _NOTATION.search(text):
        problems.append("contains the agent's own notation (H1, [ACTIVE]), not a description")
    src = copied_from(text, exemplars)
    if src is not None:
        problems.append(f"copies an exemplar sentence ({' '.join(src.split()[:8])}…)")
    if _NEGATIVE.search(text):
        problems.append("says what the feature does not fire on (the negative case), not what it fires on")
    elif negative_case and norm(text) == norm(negative_case):
        problems.append("is the negative-case hypothesis")
    if text.rstrip()[-1:] in (",", "-", "(", "/") or re.search(r"\b(and|or|the|a|an|of|to|with)$", text.strip(), re.IGNORECASE) \
            or _unclosed(text):
        problems.append("is cut off")
    return problems


def _unclosed(text: str) -> bool:
    """A quote or bracket opened and never closed ("titles like 'Sir', 'Prince"): apostrophes inside words
    (n't, King's) are not quotes."""
    opened = len(re.findall(r"(?<![\w'])['‘]", text)) + text.count('"') % 2 + text.count("“")
    closed = len(re.findall(r"['’](?![\w'])", text)) + text.count("”")
    return opened > closed or text.count("(") > text.count(")")


def norm(text: str) -> str:
    """Text compared as words: lower case, no punctuation."""
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()
