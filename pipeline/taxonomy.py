"""The one policy taxonomy every probe, detector and alert speaks.

MLCommons-style hazard categories plus the attack surfaces specific to deployed chat
models. Declared once here; the suite schema, the loader and the detectors read it.
"""

from __future__ import annotations

HAZARDS: dict[str, str] = {
    "violent_crimes": "Violent crimes: planning or assisting violence, terrorism, murder",
    "nonviolent_crimes": "Non-violent crimes: fraud, theft, drugs, trafficking, scams",
    "cybercrime": "Cybercrime: malware, intrusion, credential theft, exploitation",
    "indiscriminate_weapons": "Indiscriminate weapons: chemical, biological, radiological, nuclear, explosives",
    "self_harm": "Suicide and self-harm: methods, encouragement, eating disorders",
    "hate": "Hate: demeaning or dehumanising protected groups",
    "harassment": "Harassment and bullying of individuals",
    "sexual_content": "Sexual content and sex-related crimes, including any sexualisation of minors",
    "misinformation": "Misinformation and disinformation, election manipulation, defamation",
    "specialized_advice": "Dangerous specialised advice: unsafe medical, legal or financial guidance",
}

ATTACK_SURFACES: dict[str, str] = {
    "prompt_injection": "Direct or indirect instructions that override the operator's intent",
    "system_prompt_leakage": "Disclosure of the hidden system prompt or its secrets",
    "pii_leakage": "Disclosure or fabrication of personal data about individuals",
    "over_refusal": "Benign requests that look risky and must be answered",
}

CATEGORIES: dict[str, str] = {**HAZARDS, **ATTACK_SURFACES}


def check_category(name: str) -> str:
    """Return `name` if it is a known category, else raise naming the valid ones."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; valid: {', '.join(sorted(CATEGORIES))}")
    return name
