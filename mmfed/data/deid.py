"""De-identification of free-text clinical notes, run before tokenising.

`scrub` is the one entry point the data pipeline calls: `deidentify` first, then (optionally)
`mask_diagnosis`.

What `find_identifiers` detects (class -> placeholder, see PLACEHOLDERS):

- NAME: a title (Mr, Mrs, Ms, Miss, Mx, Dr, Prof, Sr/Sra, Sig., Dott., Herr, Frau, Mme, Mlle; with or without
  a dot) followed by capitalised names ("Dr. [NAME]"); after a name label ("Name:", "Patient name:",
  "Surname:") capitalised names or "SURNAME, First"; after another field label ("Patient:", "Pt:", "Referring
  physician:", "Reported by:" ...) two or more capitalised names before any comma ("Patient: Smoker" stays); a
  first name from the embedded gazetteer `_FIRST_NAMES` (~200 English, Italian, Spanish, German, French,
  Portuguese, Chinese pinyin, Vietnamese, Arabic, Indian, Japanese, Russian names) followed by a capitalised
  surname; a common Chinese / Vietnamese / Korean surname (`_SURNAMES_FIRST`) followed by capitalised given
  names ("Zhang Wei"). A name stops at the first word of `_NOT_NAME` (months, weekdays, anatomy, drugs,
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
field label nor starts with a first name in `_FIRST_NAMES` (or a listed East Asian surname) slips through
("Ferrari was admitted", "seen by Rossi"), as does a lone first name ("Paolo"). Cities and countries outside
an address are kept ("travel from Wuhan"); street names in languages without a listed street type, free-form
identifiers without a label and shorter than 6 digits, and dates written only in words other than the listed
month names are missed. The lists favour precision on medical vocabulary: see the tests for what must survive.

Label-leak guard (`mask_diagnosis`, off by default in `scrub`): the task label is COVID-19 vs other pneumonia,
so a note that names the pathogen or its test result leaks the label. `mask_diagnosis` replaces,
case-insensitive and word-bounded, with "[DIAGNOSIS]":

- terms (`_DIAGNOSIS_TERMS`): COVID-19 / COVID19 / COVID 19 / COVID (+ "-positive"/"-negative"), coronavirus
  (disease 2019), SARS-CoV-2 / SARS CoV 2 / SARS-CoV2, 2019-nCoV, nCoV, novel coronavirus, SARS, MERS(-CoV),
  pneumocystis (jirovecii/jiroveci/carinii), PCP, PJP, legionella (pneumophila), streptococcus / streptococcal
  / pneumococcus / pneumococcal, klebsiella, mycoplasma, chlamydophila / chlamydia, "X pneumoniae" and
  "S./K./M./C. pneumoniae", staphylococcus / staphylococcal / MRSA / S. aureus, haemophilus (influenzae),
  pseudomonas, influenza / flu / H1N1, E. coli / Escherichia coli, tuberculosis / TB, aspergillus /
  aspergillosis, varicella, the other respiratory viruses (parainfluenza, adenovirus, rhinovirus,
  metapneumovirus, RSV / respiratory syncytial virus), and the phrases "bacterial/viral/fungal/atypical
  pneumonia" (whole phrase). COVID and SARS-CoV are masked even when glued to the previous word
  ("forCOVID-19");
- test-result phrases (`_TEST_RESULT`): "<test word> ... positive|negative|detected" within one clause (test
  word: RT-PCR, PCR, swab, test, assay, serology, antigen, RNA, DNA, culture; at most 40 characters between,
  never across ".;," nor over the kept words below), "positive|negative <test word>", "tested/was/were
  positive|negative", "positive|negative for".

"pneumonia" alone, "fever", "cough", "consolidation" and "opacities" are never masked: they are shared by both
classes. "COVID-19 pneumonia" becomes "[DIAGNOSIS] pneumonia".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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


Span = tuple[int, int]  # [start, end) in the original text


# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------

_UP = "A-ZÀ-ÖØ-Þ"
_LO = "a-zß-öø-ÿ"
# A capitalised word: "Rossi", "O'Brien", "McDonald", "Müller", "Hamburg-Eppendorf".
_CAP = rf"(?:(?:O['’]|D['’]|Mc|Mac)?[{_UP}][{_LO}]+(?:[-'’][{_UP}]?[{_LO}]+)*)"
_INITIAL = rf"[{_UP}]\."
_PARTICLE = r"(?:van|von|der|den|de|di|da|del|della|dos|das|do|du|le|la|bin|ibn|al|el)"
_NAME_RUN = rf"(?:{_CAP}|{_INITIAL})(?:\s+(?:{_PARTICLE}\s+)*(?:{_CAP}|{_INITIAL})){{0,3}}"

_MONTHS_FULL = "January|February|March|April|May|June|July|August|September|October|November|December".split(
    "|"
)
_MONTHS_ABBR = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec".split("|")
_WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday".split("|")

# Words that never start or continue a name: a name run stops at the first one.
_NOT_NAME = frozenset(
    w.lower()
    for w in (
        _MONTHS_FULL
        + _MONTHS_ABBR
        + _WEEKDAYS
        + "Mon Tue Tues Wed Thu Thur Thurs Fri Sat Sun".split()
        + """
    the a an and or of in on at to for with by from as via per than then but not no nor yes none unknown
    anonymous was is were are be been has had have he she his her him they their this that these those there
    who which what when where while after before during since until also only both all any each other some
    our my your its we it i
    mr mrs ms mx miss dr prof professor sr sra srta sig dott herr frau mme mlle
    patient patients pt pts male female man woman men women boy girl adult child infant elderly baby mother
    father son daughter husband wife sister brother family contact address phone tel email date dob age sex
    mrn id name surname record number case report reports reported radiology radiologist radiograph imaging
    findings finding impression history indication clinical examination exam comparison technique conclusion
    summary note notes comment comments signed dictated verified discussed seen admitted presented referred
    transferred discharged treated started given noted showed shows
    chest lung lungs heart liver kidney kidneys brain thorax abdomen pelvis spine head neck lobe lobes zone
    zones hilum hila pleura pleural trachea bronchus bronchi diaphragm aorta mediastinum cardiac pulmonary
    right left upper lower middle bilateral anterior posterior lateral medial apical basal
    pneumonia covid sars fever cough dyspnea dyspnoea sepsis ards copd icu ed er ct cxr mri xr pet x ray
    xray scan scans film view views portable supine erect ap pa rt pcr
    syndrome disease diseases virus infection test tests positive negative normal abnormal stable improved
    worse worsening severe mild moderate acute chronic
    hospital hospitals clinic clinics center centre medical university general health healthcare infirmary
    infectious respiratory outpatient inpatient affiliated referral teaching local regional community private
    department unit ward service services emergency intensive care team staff institute college school
    street st road rd avenue ave lane drive boulevard way place square city county province state district
    region republic kingdom island islands kong korea china italy spain france germany
    day days week weeks month months year years today yesterday tomorrow morning evening night hour hours
    am pm mg ml kg mmhg
    sign signs score type grade stage class figure fig image images table
    amoxicillin azithromycin ceftriaxone levofloxacin moxifloxacin doxycycline clarithromycin oseltamivir
    remdesivir hydroxychloroquine chloroquine dexamethasone prednisone prednisolone methylprednisolone
    tocilizumab lopinavir ritonavir favipiravir vancomycin piperacillin tazobactam meropenem linezolid heparin
    enoxaparin paracetamol acetaminophen ibuprofen aspirin insulin metformin acyclovir cotrimoxazole
    trimethoprim sulfamethoxazole tofacitinib oxygen
    """.split()
    )
)


def _is_name_word(token: str) -> bool:
    return token.strip(".,;:'’").lower() not in _NOT_NAME


def _trim_name(text: str, start: int, end: int) -> Span | None:
    """Cut a candidate name run at its first non-name word; drop trailing particles and punctuation."""
    kept_end = start
    for tok in re.finditer(r"[^\s,]+", text[start:end]):
        if not _is_name_word(tok.group()):
            break
        if not re.fullmatch(_PARTICLE, tok.group()):
            kept_end = start + tok.end()
    while kept_end > start and text[kept_end - 1] in ",;:":
        kept_end -= 1
    return (start, kept_end) if kept_end > start else None


def _spans(
    pattern: re.Pattern[str],
    text: str,
    group: str | int = 0,
    check: Callable[[re.Match[str]], bool] | None = None,
) -> Iterator[Span]:
    for m in pattern.finditer(text):
        if m.group(group) is not None and (check is None or check(m)):
            yield m.span(group)


# ---------------------------------------------------------------------------------------------------------
# NAME
# ---------------------------------------------------------------------------------------------------------

_FIRST_NAMES = frozenset(
    """
    James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony
    Paul Steven Andrew Kenneth Joshua Kevin Brian George Edward Ronald Timothy Jason Jeffrey Ryan Jacob Gary
    Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Patrick Peter
    Henry Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Margaret Sandra
    Ashley Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie Rebecca Laura Sharon Cynthia
    Kathleen Helen Anna Emma Olivia Sophia Charlotte Alice Catherine Jane Julia Susanne
    Giuseppe Giovanni Antonio Mario Luigi Francesco Paolo Marco Luca Andrea Alessandro Stefano Roberto Giorgio
    Matteo Lorenzo Davide Simone Federico Riccardo Massimo Fabio Enrico Maria Giulia Francesca Chiara Sara
    Elena Valentina Alessandra Silvia Martina Federica Giovanna Rosa Paola Lucia Angela Roberta Daniela Grazia
    José Jose Juan Carlos Luis Javier Miguel Manuel Pedro Alejandro Fernando Pablo Sergio Jorge Diego Carmen
    Ana Isabel Pilar Lucía Cristina Marta Raquel Rocío Rocio Beatriz Teresa Mercedes
    Hans Klaus Jürgen Juergen Wolfgang Stefan Andreas Uwe Dieter Helmut Gerhard Ursula Monika Petra Sabine
    Renate Brigitte Katharina Heike
    Jean Pierre Philippe Michel Alain Nicolas Christophe François Francois Jacques Marie Nathalie Isabelle
    Sylvie Françoise Sophie Camille Julien Antoine
    João Joao Paulo Tiago Rui
    Wei Fang Jing Lei Yan Hui Xin Ying Ming Xiaoming Xiaohong Jie Tao Yong Qiang Hao Yu Zhiwei Jian Ping
    Anh Minh Linh Thanh Hoa Lan Mai Hung Tuan Dung Huong Trang Duc Quang Thao Hieu Phuong
    Mohammed Mohammad Muhammad Mohamed Ahmed Ahmad Ali Omar Hassan Hussein Khalid Yusuf Youssef Ibrahim
    Mustafa Fatima Aisha Mariam Maryam Layla Leila Zainab Nour Samir Karim Tariq Amina Reza Mehdi
    Rahul Priya Amit Anil Sunil Raj Sanjay Deepak Pooja Neha Arjun Ravi
    Hiroshi Takashi Yuki Kenji Akira Haruto Yuto Sakura
    Ivan Sergei Sergey Olga Natalia Natalya Dmitri Dmitry Vladimir Tatiana Irina Elena
    """.split()
)
# East Asian order: surname first. Ambiguous English words (He, Do, Le, Long, Sun ...) are left out.
_SURNAMES_FIRST = frozenset(
    """Zhang Wang Liu Chen Yang Huang Zhao Zhou Xu Wu Guo Lin Li Nguyen Tran Pham Hoang Huynh Phan Vu Vo Dang
    Bui Ngo Duong Kim Park Lee Choi""".split()
)

_TITLE = (
    r"(?<![\w.])(?:Mrs|Mr|Ms|Mx|Miss|Dr|Prof|Professor|Sra|Srta|Sr|Sig\.ra|Sig|Dott\.ssa|Dott|"
    r"Herr|Frau|Mme|Mlle)"
)
_TITLE_RE = re.compile(rf"{_TITLE}\.?\s+(?P<name>{_NAME_RUN})")
_FIELD_RE = re.compile(
    r"(?i:\b(?P<label>patient(?:'s)?\s+name|name\s+of\s+(?:the\s+)?patient|full\s+name|first\s+name|"
    r"last\s+name|family\s+name|name|patient|pt|surname|nome|cognome|nombre|apellidos?|nom|pr[ée]nom|"
    r"referring\s+(?:physician|doctor|clinician)|attending(?:\s+physician)?|physician|radiologist|"
    r"(?:reported|signed|dictated|verified|read|requested)\s+by|next\s+of\s+kin|contact\s+person))"
    rf"\s*:[ \t]*(?P<name>(?:[{_UP}]{{2,}}|{_CAP}|{_INITIAL})"
    rf"(?:,?[ \t]+(?:{_PARTICLE}\s+)*(?:[{_UP}]{{2,}}|{_CAP}|{_INITIAL})){{0,3}})"
)
_FIRST_RE = re.compile(
    rf"\b(?P<name>(?:{'|'.join(sorted(_FIRST_NAMES, key=len, reverse=True))})"
    rf"(?:\s+{_INITIAL})?(?:\s+(?:{_PARTICLE}\s+)*{_CAP}){{1,3}})\b"
)
_SURNAME_FIRST_RE = re.compile(
    rf"\b(?P<name>(?:{'|'.join(sorted(_SURNAMES_FIRST, key=len, reverse=True))})(?:\s+{_CAP}){{1,2}})\b"
)


def _field_name(text: str, m: re.Match[str]) -> Span | None:
    """After "Name:" any name; after "Patient:", "Physician:" ... 2+ words before a comma, not "Smoker"."""
    start, end = m.span("name")
    if not re.search(r"(?i)nom|name|cognome|apellido", m["label"]):
        end = start + len(text[start:end].split(",")[0])
        span = _trim_name(text, start, end)
        return span if span and " " in text[span[0] : span[1]] else None
    return _trim_name(text, start, end)


def _names(text: str) -> Iterator[Span]:
    for start, end in _spans(_TITLE_RE, text, "name"):
        span = _trim_name(text, start, end)
        if span:
            yield span
    for m in _FIELD_RE.finditer(text):
        span = _field_name(text, m)
        if span:
            yield span
    # Gazetteer rules: the first word is known, a surname must remain after trimming.
    for pattern in (_FIRST_RE, _SURNAME_FIRST_RE):
        for start, end in _spans(pattern, text, "name"):
            span = _trim_name(text, start, end)
            if span and " " in text[span[0] : span[1]].strip():
                yield span


# ---------------------------------------------------------------------------------------------------------
# DATE
# ---------------------------------------------------------------------------------------------------------

# Capitalised or upper case only ("march" and "may" are verbs); only abbreviations take a dot, so a full month
# name never swallows the full stop that ends its sentence.
_MONTH_ANY = (
    r"(?:(?:" + "|".join(_MONTHS_FULL + [m.upper() for m in _MONTHS_FULL]) + r")\b"
    r"|(?:" + "|".join(_MONTHS_ABBR + [m.upper() for m in _MONTHS_ABBR]) + r")\b\.?)"
)
_FOREIGN_MONTH = (
    r"(?:gennaio|febbraio|marzo|aprile|maggio|giugno|luglio|agosto|settembre|ottobre|novembre|dicembre|"
    r"enero|febrero|abril|mayo|junio|julio|septiembre|setiembre|octubre|noviembre|diciembre|"
    r"janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[uû]t|septembre|octobre|novembre|d[ée]cembre|"
    r"januar|februar|m[äa]rz|juni|juli|oktober|dezember)"
)
_WEEKDAY = r"(?:(?:" + "|".join(_WEEKDAYS) + r")|(?:Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)\.?)"
_WD_PREFIX = rf"(?:{_WEEKDAY},?\s+)?"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?(?!\d)"
_DAY_RANGE = rf"(?:\s*(?:-|–|to|and)\s*{_DAY})?"
_YEAR = r"(?:(?:19|20)\d{2}|['’]\d{2})(?!\d)"

_DATE_RES = [
    # 14 March 2020, 3rd of March, Monday 16 March 2020, 1 and 2 March; not "grade 3 March fracture"
    re.compile(rf"\b{_WD_PREFIX}{_DAY}{_DAY_RANGE}(?:\s+of)?\s+{_MONTH_ANY}(?:,?\s+{_YEAR})?(?!\s+fracture)"),
    # March 14, 2020 / Mar 14 / January 8 to 12
    re.compile(rf"\b{_WD_PREFIX}{_MONTH_ANY}\s+{_DAY}{_DAY_RANGE}(?:,?\s+{_YEAR})?"),
    # March 2020
    re.compile(rf"\b{_MONTH_ANY},?\s+{_YEAR}"),
    # 14-Mar-2020
    re.compile(rf"\b{_DAY}[-/ ]{_MONTH_ANY}[-/ ](?:(?:19|20)\d{{2}}|\d{{2}})\b"),
    # 12 marzo 2020, 5 de marzo de 2020, 14. März 2020 (year required: "mars", "mai" are words elsewhere)
    re.compile(rf"(?i:\b{_DAY}\.?\s+(?:de\s+)?{_FOREIGN_MONTH}\s+(?:de\s+)?(?:19|20)\d{{2}}\b)"),
]
# Numeric dates: same separator twice, validated below.
_NUM_DATE_RE = re.compile(
    rf"(?<![\w./-]){_WD_PREFIX}(?P<a>\d{{1,2}})(?P<sep>[/.-])(?P<b>\d{{1,2}})(?P=sep)(?P<c>\d{{4}}|\d{{2}})"
    r"(?![\w/]|[.-]\d)"
)
_UNIT_AFTER = re.compile(r"\s*(?:mm|cm|m|mg|ml|g|kg|l|%|x|×)(?![\w-])", re.IGNORECASE)
_ISO_DATE_RE = re.compile(
    r"(?<![\w./-])(?:19|20)\d{2}(?P<sep>[-/.])(?:0?[1-9]|1[0-2])(?P=sep)(?:[12]\d|3[01]|0?[1-9])(?![\w/]|[.-]\d)"
)


def _valid_numeric_date(m: re.Match[str]) -> bool:
    a, b, c = int(m["a"]), int(m["b"]), m["c"]
    if not (1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)):
        return False
    if len(c) == 4:
        return c.startswith(("19", "20"))
    # "1.5.10", "2-3-20" and "10-12-14 mm" look like ranges: with a 2-digit year and dots/hyphens, want a
    # 2-digit day and month; with any separator, no unit after it.
    if m["sep"] != "/" and (len(m["a"]) < 2 or len(m["b"]) < 2):
        return False
    return not _UNIT_AFTER.match(m.string, m.end())


def _dates(text: str) -> Iterator[Span]:
    for pattern in _DATE_RES:
        yield from _spans(pattern, text)
    yield from _spans(_NUM_DATE_RE, text, check=_valid_numeric_date)
    yield from _spans(_ISO_DATE_RE, text)


# ---------------------------------------------------------------------------------------------------------
# AGE
# ---------------------------------------------------------------------------------------------------------

_UNITS = "one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUM_WORD = rf"(?:(?:{'|'.join(_TENS)})(?:[-\s](?:{'|'.join(_UNITS)}))?|{'|'.join(_TEENS + _UNITS)})"
_DASH = r"[-‐–]"

_AGE_OLD_RE = re.compile(
    rf"(?i:\b(?:\d{{1,3}}|{_NUM_WORD})\s*{_DASH}?\s*(?:years?|yrs?|months?|mos?)\s*{_DASH}?\s*old\b)"
)
_AGE_YO_RE = re.compile(r"\b\d{1,3}\s*(?:y/o|y\.o\.?|yo)(?![A-Za-z])")
_AGE_PAREN_RE = re.compile(r"\(\s*(?P<v>\d{1,3}\s*(?:y|yrs?)\.?)\s*[,)]")
_AGE_FIELD_RE = re.compile(
    r"(?i:\b(?:aged?|age\s+of|(?:patient|man|woman|male|female)\s+of(?=\s*\d{1,3}\s*y))\s*[:=]?\s*)(?P<v>\d{1,3}(?:\s*(?:years?|yrs?|y)\b(?:\s*old\b)?)?)(?![\d.,]\d)"
)
_AGE_YRS_RE = re.compile(r"\b\d{1,3}\s*yrs?\b")
_NOT_AGE_BEFORE = re.compile(
    r"(?i:\b(?:for|over|past|last|after|within|since|x|pack|of|than|about|around|approximately)\s*$)"
)
_NOT_AGE_AFTER = re.compile(
    r"(?i:^\s*(?:ago|history|prior|earlier|later|before|after|of|duration|follow|post|since)\b)"
)


def _yrs_is_age(text: str) -> Callable[[re.Match[str]], bool]:
    """'45 yrs' is an age; 'for 20 yrs' and '5 yrs ago' are durations."""

    def check(m: re.Match[str]) -> bool:
        before = text[max(0, m.start() - 20) : m.start()]
        return not (_NOT_AGE_BEFORE.search(before) or _NOT_AGE_AFTER.search(text[m.end() : m.end() + 20]))

    return check


def _ages(text: str) -> Iterator[Span]:
    yield from _spans(_AGE_OLD_RE, text)
    yield from _spans(_AGE_YO_RE, text)
    yield from _spans(_AGE_PAREN_RE, text, "v")
    yield from _spans(_AGE_FIELD_RE, text, "v")
    yield from _spans(_AGE_YRS_RE, text, check=_yrs_is_age(text))


# ---------------------------------------------------------------------------------------------------------
# PHONE
# ---------------------------------------------------------------------------------------------------------

_PHONE_LABEL_RE = re.compile(
    r"(?i:\b(?:tel(?:ephone)?|phone|mob(?:ile)?|cell(?:phone)?|fax|pager|t[ée]l[ée]fono|telefono|t[ée]l)\b\.?"
    r"\s*(?:no\.?|number|#)?\s*[:.]?\s*)"
    r"(?P<v>\+?(?:\(\d{1,5}\)|\d{1,5})(?:[\s.-]?(?:\(\d{1,5}\)|\d{1,5})){1,6})"
)
_PHONE_INTL_RE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?(?:\(\d{1,4}\)|\d{1,5})){2,6}")
_PHONE_US_RE = re.compile(r"(?<![\w.-])(?:\(\d{3}\)\s*\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])")
_PHONE_NATIONAL_RE = re.compile(r"(?<![\w.,+/-])0\d{1,4}(?:[\s-]\d{2,5}){1,3}(?![\w]|[.,/-]\d)")


def _trim_phone(text: str, span: Span, lo: int, hi: int) -> Span | None:
    """Drop a trailing 1-digit group ('555-123-4567 5 days'), then check the digit count."""
    start, end = span
    m = re.search(r"[\s.-]\d$", text[start:end])
    if m and end - start > 2:
        end = start + m.start()
    digits = sum(c.isdigit() for c in text[start:end])
    return (start, end) if lo <= digits <= hi else None


def _phones(text: str) -> Iterator[Span]:
    for pattern, group, lo, hi in (
        (_PHONE_LABEL_RE, "v", 7, 15),
        (_PHONE_INTL_RE, 0, 8, 15),
        (_PHONE_US_RE, 0, 10, 10),
        (_PHONE_NATIONAL_RE, 0, 9, 12),
    ):
        for span in _spans(pattern, text, group):
            trimmed = _trim_phone(text, span, lo, hi)
            if trimmed:
                yield trimmed


# ---------------------------------------------------------------------------------------------------------
# EMAIL, URL
# ---------------------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_URL_RE = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'\])]+")
_DOMAIN_RE = re.compile(
    r"(?<![\w@.])(?:[A-Za-z0-9-]+\.)+(?:com|org|net|edu|gov|info|io|it|es|fr|de|uk|cn|vn|kr|jp|ch|nl|be|at|eu)"
    r"\b(?:/[^\s<>\"'\])]*)?"
)


def _urls(text: str) -> Iterator[Span]:
    for pattern in (_URL_RE, _DOMAIN_RE):
        for start, end in _spans(pattern, text):
            while end > start and text[end - 1] in ".,;:!?":  # sentence punctuation is not part of the URL
                end -= 1
            yield start, end


# ---------------------------------------------------------------------------------------------------------
# ADDRESS
# ---------------------------------------------------------------------------------------------------------

_STREET_TYPE = (
    r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Place|Pl\.?"
    r"|Square|Sq\.?|Terrace|Close|Crescent|Highway|Hwy\.?|Parkway|Pkwy\.?|Way|Row|Strasse|Straße|Str\.|Gasse"
    r"|Weg|Allee|Platz)(?![\w])"
)
_STREET_PREFIX = (
    r"(?:Via|Viale|Vicolo|Corso|Piazza|Piazzale|Largo|Calle|Avenida|Avda\.|Paseo|Plaza|Carrer|Rua|Rue|"
    r"Boulevard|Bd\.?|Avenue|Chemin|Place|Quai)"
)
_STREET_NAME = rf"(?:{_CAP}|\d{{1,3}}(?:st|nd|rd|th)|First|Second|Third)"
_CONNECT = r"(?:di|del|della|delle|dei|degli|de|la|las|los|le|les|du|des|d['’])"
_US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()
_STATE = r"(?:" + "|".join(_US_STATES) + r")"
_ZIP = r"\d{5}(?:-\d{4})?(?!\d)"
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b"
_CITY = rf"{_CAP}(?:\s+{_CAP}){{0,2}}"
# ", Boston, MA 02114" / ", Milano 20121" / ", 75004 Paris" / ", London NW1 6XE": a postcode is required.
_CITY_TAIL = (
    rf"(?:,\s*(?:{_CITY},?\s+{_STATE}\s+{_ZIP}|{_CITY},?\s+{_ZIP}|\d{{4,5}}\s+{_CITY}|"
    rf"{_CITY},?\s+{_UK_POSTCODE}|{_UK_POSTCODE}))?"
)
_DIRECTIONAL = r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
_ADDRESS_RES = [
    # 12 Baker Street, 200 First St SW
    re.compile(
        rf"(?<![\w.,])\d{{1,5}}[A-Za-z]?,?\s+(?:{_STREET_NAME}\s+){{1,4}}{_STREET_TYPE}{_DIRECTIONAL}{_CITY_TAIL}"
    ),
    # 14 Via Roma, Via Roma 14, Calle de Alcalá 45, 8 Rue de Rivoli
    re.compile(
        rf"(?:(?<![\w.,])\d{{1,5}}[A-Za-z]?,?\s+)?\b{_STREET_PREFIX}\s+(?:{_CONNECT}\s*)*{_CAP}"
        rf"(?:\s+(?:{_CONNECT}\s*)*{_CAP}){{0,3}}(?:,?\s+\d{{1,5}}[A-Za-z]?(?![\w.,]\d|\w))?{_CITY_TAIL}"
    ),
    # Hauptstraße 12
    re.compile(
        rf"\b[{_UP}][{_LO}]+(?:straße|strasse|str\.|gasse|weg|allee|platz|ring|damm)\s+\d{{1,4}}[a-z]?\b{_CITY_TAIL}"
    ),
    # Boston, MA 02114 / NY 10001
    re.compile(rf"(?:\b{_CITY},\s+)?\b{_STATE}\s+{_ZIP}"),
    # UK postcode
    re.compile(rf"\b{_UK_POSTCODE}"),
]
# Cities that may stand before/after a postcode without a street ("Milano 20121", "20122 Milan").
_CITIES = (
    "Milan|Milano|Rome|Roma|Turin|Torino|Naples|Napoli|Bologna|Florence|Firenze|Genoa|Genova|Venice|Venezia|"
    "Padua|Padova|Verona|Bergamo|Brescia|Lodi|Cremona|Pavia|Piacenza|Madrid|Barcelona|Valencia|Sevilla|Seville|"
    "Paris|Lyon|Marseille|Lille|Strasbourg|Berlin|Munich|München|Hamburg|Frankfurt|Cologne|Köln|Vienna|Wien|"
    "Zurich|Zürich|Geneva|Genève|Brussels|Amsterdam|Lisbon|Lisboa|Porto|Wuhan|Beijing|Shanghai|Hanoi|"
    "Seoul|Tokyo|New York|Boston|Chicago|Houston|Seattle"
)
_CITY_POSTCODE_RE = re.compile(rf"\b(?:(?:{_CITIES}),?\s+\d{{4,5}}|\d{{5}}\s+(?:{_CITIES}))\b")


def _addresses(text: str) -> Iterator[Span]:
    for pattern in _ADDRESS_RES:
        for start, end in _spans(pattern, text):
            while end > start and text[end - 1] in ",;:":
                end -= 1
            yield start, end
    yield from _spans(_CITY_POSTCODE_RE, text)


# ---------------------------------------------------------------------------------------------------------
# ID
# ---------------------------------------------------------------------------------------------------------

_NUM_WORDS = r"(?:number|num\.?|no\.?|nr\.?|#|id)"
_ID_LABEL_RE = re.compile(
    r"(?:(?i:\b(?:mrn|m\.r\.n\.?|medical\s+record(?:\s+" + _NUM_WORDS + r")?|"
    r"(?:hospital\s+|health\s+)?record\s+"
    + _NUM_WORDS
    + r"|patient\s+(?:id|identifier|number|no\.?|nr\.?|#)|"
    r"pid|accession(?:\s+" + _NUM_WORDS + r")?|acc\.?\s*(?:no\.?|#)|case(?:\s+" + _NUM_WORDS + r")?|"
    r"nhs(?:\s+" + _NUM_WORDS + r")?|ssn|social\s+security(?:\s+" + _NUM_WORDS + r")?|study\s+id|"
    r"(?:encounter|visit|admission|specimen|insurance|policy|reference|ref\.?)\s+" + _NUM_WORDS + r"|"
    r"encounter|rid)(?!\w))|\bID\b)"
    r"\s*[:#]?\s*(?:#\s*)?"
    r"(?P<v>(?:[A-Z]{1,4}-?)?\d+(?:[-/.]\d+)*(?:[ -]\d{3,4}(?!\d|[.,]\d))*[A-Z]?)(?![\w])"
)
_SSN_RE = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
_LONG_DIGITS_RE = re.compile(
    r"(?<![\w.,])\d{6,}(?![\w]|[.,]\d)(?!\s*(?:/|x\b|×|cells|copies|iu\b|u/|mg|ng|µ|μ|mcg|per\b|mm))",
    re.IGNORECASE,
)


def _ids(text: str) -> Iterator[Span]:
    yield from _spans(_ID_LABEL_RE, text, "v", check=lambda m: sum(c.isdigit() for c in m["v"]) >= 3)
    yield from _spans(_SSN_RE, text)
    yield from _spans(_LONG_DIGITS_RE, text)


# ---------------------------------------------------------------------------------------------------------
# HOSPITAL
# ---------------------------------------------------------------------------------------------------------

# "St." is the only dotted word, so "Rossi. Hospital" stays apart; U+FFFD stands in for a lost apostrophe.
_HCAP = rf"(?:(?:St|Ste|Mt)\.|[{_UP}][\w'’\ufffd-]*)"
_HCONN = r"(?:of|the|and|&|de|del|della|di|da|la|le|du|des|y|for)"
_HOSPITAL_SUFFIX = (
    r"(?:Hospitals?|Clinic|(?:Medical|Clinical|Health|Hospital|Cancer|Heart|Trauma)\s+Cent(?:er|re)|Infirmary"
    r"|Health\s+System|Healthcare|Medical\s+College)"
)
_HOSPITAL_PREFIX = (
    r"(?:Ospedale|Policlinico|Universitätsklinikum|Universitatsklinikum|Klinikum|Hôpital|Hopital|"
    r"Clínica|Clinica|Clinique|Krankenhaus|Centre\s+Hospitalier(?:\s+Universitaire)?|Azienda\s+Ospedaliera|"
    r"Presidio\s+Ospedaliero|Spital|"
    # Spanish/Portuguese order, only before a word that cannot be English ("Hospital Stay" stays).
    r"Hospital(?=\s+(?:de|del|do|da|dos|das|San|Santa|Sant|São|Sao|Universitario|Universitari|Universitário|"
    r"Clínic|Clinic|Clínico|Clinico|Militar|Infantil|Italiano|Alemán|Aleman|Británico|Britanico|Israelita|"
    r"Nacional|Provincial|Virgen|Nuestra|Reina|Príncipe|Principe|Regional|Central|General)\b))"
)
# "... Clinic of Xiangyang First People's Hospital": the "of" part may itself end in a suffix.
_OF_PLACE = (
    rf"(?:\s+of\s+(?:the\s+)?(?:(?:{_HCAP}\s+){{0,4}}{_HOSPITAL_SUFFIX}\b|{_HCAP}(?:\s+{_HCAP}){{0,2}}))?"
)
_HOSPITAL_SUFFIX_RE = re.compile(
    rf"\b{_HCAP}(?:\s+(?:{_HCONN}\s+)*{_HCAP}){{0,5}}\s+{_HOSPITAL_SUFFIX}\b{_OF_PLACE}"
)
_HOSPITAL_PREFIX_RE = re.compile(rf"\b{_HOSPITAL_PREFIX}(?:\s+(?:{_HCONN}\s+)*{_HCAP}){{1,5}}")
# Never trimmed: the suffix words themselves, and month/weekday words ("Hospital del Mar").
_HOSPITAL_WORDS = frozenset(
    "hospital hospitals clinic infirmary healthcare college center centre system general university".split()
    + ["st"]
    + [w.lower() for w in _MONTHS_FULL + _MONTHS_ABBR + _WEEKDAYS]
)


def _trim_hospital(text: str, start: int, end: int) -> Span | None:
    """Drop common words at both ends ('Our', 'Emergency Department of', '... Hospital Affiliated')."""
    words = list(re.finditer(r"\S+", text[start:end]))
    lo, hi = 0, len(words)

    def common(w: re.Match[str]) -> bool:
        token = w.group().strip(".,")
        low = token.lower()
        return re.fullmatch(_HCONN, token) is not None or (low in _NOT_NAME and low not in _HOSPITAL_WORDS)

    while lo < hi and common(words[lo]):
        lo += 1
    while hi > lo and common(words[hi - 1]):
        hi -= 1
    if hi - lo < 2:  # a lone "Hospital" / "Clinic" is generic
        return None
    return start + words[lo].start(), start + words[hi - 1].end()


def _hospitals(text: str) -> Iterator[Span]:
    for pattern in (_HOSPITAL_SUFFIX_RE, _HOSPITAL_PREFIX_RE):
        for start, end in _spans(pattern, text):
            span = _trim_hospital(text, start, end)
            if span:
                yield span


# ---------------------------------------------------------------------------------------------------------
# Resolution and public API
# ---------------------------------------------------------------------------------------------------------

_DETECTORS: dict[str, Callable[[str], Iterable[Span]]] = {
    "EMAIL": lambda text: _spans(_EMAIL_RE, text),
    "URL": _urls,
    "HOSPITAL": _hospitals,
    "ADDRESS": _addresses,
    "PHONE": _phones,
    "ID": _ids,
    "DATE": _dates,
    "AGE": _ages,
    "NAME": _names,
}


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
    candidates = ((kind, span) for kind, detect in _DETECTORS.items() for span in detect(text))
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

_DIAGNOSIS_TERMS = [
    # Before the genus names: the first alternative that matches wins.
    r"(?:[skmc]\.\s?|streptococcus\s+|klebsiella\s+|mycoplasma\s+|chlamydophila\s+|chlamydia\s+)pneumoniae",
    r"(?:covid|corona\s*virus)[-\s]?(?:disease[-\s]?)?(?:20)?19(?:[-\s]?(?:positive|negative))?",
    r"covid(?:[-\s]?(?:positive|negative))?",
    r"novel\s+coronavirus",
    r"coronavirus(?:\s+disease)?",
    r"sars[-\s]?cov[-\s]?2|sars[-\s]?cov|2019[-\s]?ncov|ncov|sars",
    r"mers(?:[-\s]?cov)?",
    r"pneumocystis(?:\s+(?:jirovecii|jiroveci|carinii))?|pcp|pjp",
    r"legionella(?:\s+pneumophila)?|legionnaires['’]?(?:\s+disease)?",
    r"streptococcus|streptococcal|streptococci|strep|pneumococcus|pneumococcal",
    r"klebsiella|mycoplasma|chlamydophila|chlamydia|haemophilus|hemophilus|pseudomonas|moraxella",
    r"staphylococcus|staphylococcal|staph|mrsa|mssa|s\.\s?aureus",
    r"influenzae?|flu|h1n1|h5n1",
    r"e\.\s?coli|escherichia\s+coli",
    r"tuberculosis|tuberculous|tb|mycobacterium(?:\s+tuberculosis)?",
    r"aspergillus|aspergillosis|varicella",
    r"parainfluenza|adenovirus|rhinovirus|metapneumovirus|respiratory\s+syncytial\s+virus|rsv",
    r"(?:bacterial|viral|fungal|atypical)\s+pneumonias?",
]
# COVID / SARS-CoV are also caught glued to the previous word, a common typo ("forCOVID-19").
_GLUED = r"covid[-\s]?(?:20)?19|covid|sars[-\s]?cov[-\s]?2"
_DIAGNOSIS_RE = re.compile(
    r"(?:(?<![\w-])(?:" + "|".join(_DIAGNOSIS_TERMS) + r")|" + _GLUED + r")(?![\w])", re.IGNORECASE
)
_TEST_WORD = r"(?:rt[-\s]?pcr|pcr|swabs?|tests?|testing|assay|serology|serologies|antigen|rna|dna|cultures?)"
_KEEP = r"(?:pneumonia|consolidat|opacit|fever|cough)"
_TEST_RESULT = [
    rf"{_TEST_WORD}\b(?:(?!{_KEEP})[^.;,\n]){{0,40}}?\b(?:positive|negative|detected)",
    rf"(?:positive|negative)\s+{_TEST_WORD}(?:\s+tests?)?",
    r"(?:tested|was|were|is|are)\s+(?:positive|negative)",
    r"(?:positive|negative)\s+for",
]
_TEST_RESULT_RE = re.compile(r"\b(?:" + "|".join(_TEST_RESULT) + r")\b", re.IGNORECASE)


def mask_diagnosis(text: str) -> str:
    """Replace diagnosis terms and test-result phrases that reveal the label with [DIAGNOSIS]."""
    candidates = [("DIAGNOSIS", m.span()) for p in (_DIAGNOSIS_RE, _TEST_RESULT_RE) for m in p.finditer(text)]
    return _replace(text, _resolve(text, candidates))


def scrub(text: str, deidentify_text: bool = True, mask_label_terms: bool = False) -> str:
    """The pipeline's entry point: de-identify, then optionally mask label-revealing diagnosis terms."""
    if deidentify_text:
        text = deidentify(text)
    if mask_label_terms:
        text = mask_diagnosis(text)
    return text
