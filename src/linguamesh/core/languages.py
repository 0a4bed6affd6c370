"""Language codes the scheduler accepts (ISO 639-1, plus a region or script subtag), and
which target languages a session's next utterance gets. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence, Set

ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv
    cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht
    hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la
    lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj
    om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv
    sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

_CODE = re.compile(r"^([a-z]{2})(?:[-_]([A-Za-z]{4}|[A-Z]{2}|[0-9]{3}))?$")


def is_known(code: str) -> bool:
    m = _CODE.match(code)
    return m is not None and m.group(1) in ISO_639_1


def pair_problem(src: str, tgt: str) -> str | None:
    """Why a pair can never be served, or None."""
    for field, code in (("src_lang", src), ("tgt_lang", tgt)):
        if not is_known(code):
            return f"{field} {code!r} is not a known language code (ISO 639-1, e.g. 'en', 'zh')"
    return None


def session_targets(
    speaker: Sequence[str],
    src: str,
    listeners: Mapping[str, tuple[float, float]],
    now: float,
    most: int,
    servable: Set[str],
    granted: Set[str] | None = None,
) -> tuple[list[str], list[str]]:
    """The target languages of a session's next utterance: the speaker's own, then the
    languages viewers listen to (``listeners``: when each was first asked for and when it
    lapses, epoch seconds) that have not lapsed, are not the source, and a node serves
    (``servable``: the targets of the source some node serves) and the speaker's access
    token grants (``granted``; None: any) — first asked, first served, while ``most``
    allows. Returns the targets and the listener languages left out for ``most``."""
    targets = list(speaker)
    over: list[str] = []
    for lang in sorted(listeners, key=lambda k: (listeners[k][0], k)):
        if listeners[lang][1] <= now or lang == src or lang in targets or lang not in servable:
            continue
        if granted is not None and lang not in granted:
            continue
        (targets if len(targets) < most else over).append(lang)
    return targets, over
