"""De-identification of free-text clinical notes, run before tokenising.

`scrub` is the one entry point the data pipeline calls: `deidentify` first, then (optionally)
`mask_diagnosis`. The patterns and gazetteers named below (`FIRST_NAMES`, `NOT_NAME` ...) are data tables
in mmfed.data.deid_tables, the per-class detectors that apply them are in mmfed.data.deid_detectors; this
module merges their candidates into findings and replaces them.

What `find_identifiers` detects (class -> placeholder, see PLACEHOLDERS):

- NAME: a title (Mr, Mrs, Ms, Miss, Mx, Dr, Prof, Sr/Sra, Sig., Dott., Herr, Frau, Mme, Mlle; with or without
  a dot) followed by capitalised names ("Dr. [NAME]"); after a name label ("Name:", "Patient name:",
  "Surname:") capitalised names or "SURNAME, First"; after another field label ("Patient:", "Pt:", "Referring
  physician:", "Reported by:" ...) two or more capitalised names before any comma ("Patient: Smoker" stays); a
  first name from the embedded gazetteer `FIRST_NAMES` (~200 English, Italian, Spanish, German, French,
  Portuguese, Chinese pinyin, Vietnamese, Arabic, Indian, Japanese, Russian names) followed by a capitalised
  surname; a common Chinese / Vietnamese / Korean surname (`SURNAMES_FIRST`) followed by capitalised given
  names ("Zhang Wei"). A name stops at the first word of `NOT_NAME` (months, weekdays, anatomy, drugs,
  clinical and common words).
- DATE: ISO 2020-03-14; numeric 14/03/2020, 3/14/20, 14.03.2020, 14-03-2020 (same separator twice, day/month
  validated); "March 14, 2020", "14 March 2020", "Mar 14", "March 2020", "3rd of March", "14-Mar-2020";
  "12 marzo 2020" style dates in Italian/Spanish/French/German (year required); an optional weekday prefix;
  day ranges ("January 8 to 12", "1 and 2 March"). Not "10-12-14 mm" nor "March fracture". Not durations
  ("3 days", "day 5", "for two weeks") and not a bare year ("In 2015"): a year alone is not an identifier
  under HIPAA Safe Harbor and carries clinical history.
- AGE: "45-year-old", "45 year old", "45 years old", "sixty-five-year-old", "6-month-old", "45 y/o", "45yo",
  "45 y.o.", "(45 y)", "45 yrs" (not "for 20 yrs" / "5 yrs ago"), and the number in "aged 45", "age 45",
  "Age: 45", "age of 45", "patient of 53 years".
- PHONE: "+39 02 3904 2241", "(555) 123-4567", "555-123-4567", national numbers starting with 0
  ("020 7946 0958", 9 to 12 digits), and any number after Tel/Phone/Mobile/Fax (7 to 15 digits).
- EMAIL; URL: http(s)://..., www...., and bare domains with a common top-level domain ("radiopaedia.org").
- ADDRESS: number + capitalised street name + street type ("12 Baker Street", "200 First St SW"); Via/Viale/
  Corso/Piazza/Calle/Avenida/Rue/... + name (+ number) ("14 Via Roma", "Calle de Alcala 45"); German
  "Hauptstraße 12"; a following ", City ZIP" / ", ZIP City" / ", City, ST ZIP" / UK postcode; gazetteer city +
  postcode ("Milano 20121"); US state + ZIP ("MA 02114"); UK postcodes ("SW1A 1AA").
- ID: the value after MRN, medical record number, record no., patient ID, accession (no.), case (#/no.), NHS
  number, SSN, encounter/visit/admission/specimen number, rID, "ID:" (>= 3 digits, letters prefix allowed:
  "VN2020-0147"); SSN-shaped 123-45-6789; runs of >= 6 digits that are not a decimal, a count per unit
  ("250000/uL") or part of a date or phone number.
- HOSPITAL: capitalised words ending in Hospital(s), Clinic, Medical Center/Centre, Health Center/Centre,
  Infirmary, Health System, Healthcare, Medical College (+ "of X"): "Cho Ray Hospital", "St. Mary's Hospital",
  "University Hospital of Padua"; or starting with Ospedale, Policlinico, Klinikum, Universitätsklinikum,
  Hôpital/Hopital, Hospital (Spanish order: "Hospital Universitario La Paz"), Clínica, Clinique, Krankenhaus,
  Centre Hospitalier, Azienda Ospedaliera. The lowercase word "hospital" ("admitted to hospital") is kept, and
  leading common words are trimmed ("Our Hospital" is not a name).

Placeholder scheme: every finding is replaced by "[CLASS]" (PLACEHOLDERS); all other characters are untouched.
Only the identifying part is replaced and labels stay ("MRN [ID]", "Dr. [NAME]", "aged [AGE]",
"Tel: [PHONE]"), so the note still reads as a note; "a 45-year-old man" becomes "a [AGE] man". Placeholders
are never detected again, so `deidentify` is idempotent. Overlapping candidates are merged into one finding
spanning their union, with the class of the longest candidate (ties: the order of PLACEHOLDERS), so a shorter
overlapping match never leaves a fragment of an identifier behind.

Known limits: this is regex + small gazetteers, not an NER model. A name that is neither after a title or a
field label nor starts with a first name in `FIRST_NAMES` (or a listed East Asian surname) slips through
("Ferrari was admitted", "seen by Rossi"), as does a lone first name ("Paolo"). Cities and countries outside
an address are kept ("travel from Wuhan"); street names in languages without a listed street type, free-form
identifiers without a label and shorter than 6 digits, and dates written only in words other than the listed
month names are missed. The lists favour precision on medical vocabulary: see the tests for what must survive.

Label-leak guard (`mask_diagnosis`, off by default in `scrub`): the task label is COVID-19 vs other pneumonia,
so a note that names the pathogen or its test result leaks the label. `mask_diagnosis` replaces,
case-insensitive and word-bounded, with "[DIAGNOSIS]":

- terms (`DIAGNOSIS_TERMS`): COVID-19 / COVID19 / COVID 19 / COVID (+ "-positive"/"-negative"), coronavirus
  (disease 2019), SARS-CoV-2 / SARS CoV 2 / SARS-CoV2, 2019-nCoV, nCoV, novel coronavirus, SARS, MERS(-CoV),
  pneumocystis (jirovecii/jiroveci/carinii), PCP, PJP, legionella (pneumophila), streptococcus / streptococcal
  / pneumococcus / pneumococcal, klebsiella, mycoplasma, chlamydophila / chlamydia, "X pneumoniae" and
  "S./K./M./C. pneumoniae", staphylococcus / staphylococcal / MRSA / S. aureus, haemophilus (influenzae),
  pseudomonas, influenza / flu / H1N1, E. coli / Escherichia coli, tuberculosis / TB, aspergillus /
  aspergillosis, varicella, the other respiratory viruses (parainfluenza, adenovirus, rhinovirus,
  metapneumovirus, RSV / respiratory syncytial virus), and the phrases "bacterial/viral/fungal/atypical
  pneumonia" (whole phrase). COVID and SARS-CoV are masked even when glued to the previous word
  ("forCOVID-19");
- test-result phrases (`TEST_RESULT`): "<test word> ... positive|negative|detected" within one clause (test
  word: RT-PCR, PCR, swab, test, assay, serology, antigen, RNA, DNA, culture; at most 40 characters between,
  never across ".;," nor over the kept words below), "positive|negative <test word>", "tested/was/were
  positive|negative", "positive|negative for".

"pneumonia" alone, "fever", "cough", "consolidation" and "opacities" are never masked: they are shared by both
classes. "COVID-19 pneumonia" becomes "[DIAGNOSIS] pneumonia".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mmfed.data.deid_detectors import DETECTORS, Span
from mmfed.data.deid_tables import DIAGNOSIS_RE, TEST_RESULT_RE

PLACEHOLDERS: dict[str, str] = {
    "EMAIL": "[EMAIL]",
    "URL": "[URL]",
    "HOSPITAL": "[HOSPITAL]",
    "ADDRESS": "[ADDRESS]",
    "PHONE": "[PHONE]",
    "ID": "[ID]",
    "DATE": "[DATE]",
    "AGE": "[AGE]",
    "NAME": "[NAME]",
    "DIAGNOSIS": "[DIAGNOSIS]",
}
_PRIORITY = {kind: i for i, kind in enumerate(PLACEHOLDERS)}  # tie-break on equal length: earlier wins


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int  # offsets in the ORIGINAL text
    end: int
    text: str


# ---------------------------------------------------------------------------------------------------------
# Resolution and public API
# ---------------------------------------------------------------------------------------------------------


def _resolve(text: str, candidates: Iterable[tuple[str, Span]]) -> list[Finding]:
    """Merge overlapping candidates into one finding (their union) with the kind of the longest."""
    ordered = sorted(
        ((kind, s, e) for kind, (s, e) in candidates if e > s),
        key=lambda c: (c[1], -(c[2] - c[1]), _PRIORITY[c[0]]),
    )
    out: list[Finding] = []
    group: list[tuple[str, int, int]] = []

    def flush() -> None:
        if group:
            kind = min(group, key=lambda c: (-(c[2] - c[1]), _PRIORITY[c[0]]))[0]
            start, end = group[0][1], max(c[2] for c in group)
            out.append(Finding(kind, start, end, text[start:end]))
            group.clear()

    for cand in ordered:
        if group and cand[1] >= max(c[2] for c in group):
            flush()
        group.append(cand)
    flush()
    return out


def find_identifiers(text: str) -> list[Finding]:
    """Identifiers in `text`: non-overlapping, sorted by start, offsets in `text`."""
    candidates = ((kind, span) for kind, detect in DETECTORS.items() for span in detect(text))
    return _resolve(text, candidates)


def _replace(text: str, findings: list[Finding]) -> str:
    parts, pos = [], 0
    for f in findings:
        parts += [text[pos : f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


def deidentify(text: str) -> str:
    """`text` with every identifier replaced by its placeholder; every other character untouched."""
    return _replace(text, find_identifiers(text))


# ---------------------------------------------------------------------------------------------------------
# Label-leak guard
# ---------------------------------------------------------------------------------------------------------


def mask_diagnosis(text: str) -> str:
    """Replace diagnosis terms and test-result phrases that reveal the label with [DIAGNOSIS]."""
    candidates = [("DIAGNOSIS", m.span()) for p in (DIAGNOSIS_RE, TEST_RESULT_RE) for m in p.finditer(text)]
    return _replace(text, _resolve(text, candidates))


def scrub(text: str, deidentify_text: bool = True, mask_label_terms: bool = False) -> str:
    """The pipeline's entry point: de-identify, then optionally mask label-revealing diagnosis terms."""
    if deidentify_text:
        text = deidentify(text)
    if mask_label_terms:
        text = mask_diagnosis(text)
    return text
