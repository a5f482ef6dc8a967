"""The data tables of mmfed.data.deid: gazetteers (first names, surnames, cities, non-name words) and the
regular expressions built from them, per class of identifier, and the label-leak terms of `mask_diagnosis`.

What each table detects, and what it must leave alone, is described in mmfed.data.deid; the detectors that
apply, trim and validate these matches are in mmfed.data.deid_detectors.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------

UP = "A-ZÀ-ÖØ-Þ"
LO = "a-zß-öø-ÿ"
# A capitalised word: "Rossi", "O'Brien", "McDonald", "Müller", "Hamburg-Eppendorf".
CAP = rf"(?:(?:O['’]|D['’]|Mc|Mac)?[{UP}][{LO}]+(?:[-'’][{UP}]?[{LO}]+)*)"
INITIAL = rf"[{UP}]\."
PARTICLE = r"(?:van|von|der|den|de|di|da|del|della|dos|das|do|du|le|la|bin|ibn|al|el)"
NAME_RUN = rf"(?:{CAP}|{INITIAL})(?:\s+(?:{PARTICLE}\s+)*(?:{CAP}|{INITIAL})){{0,3}}"

MONTHS_FULL = "January|February|March|April|May|June|July|August|September|October|November|December".split(
    "|"
)
MONTHS_ABBR = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec".split("|")
WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday".split("|")

# Words that never start or continue a name: a name run stops at the first one.
NOT_NAME = frozenset(
    w.lower()
    for w in (
        MONTHS_FULL
        + MONTHS_ABBR
        + WEEKDAYS
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


# ---------------------------------------------------------------------------------------------------------
# NAME
# ---------------------------------------------------------------------------------------------------------

FIRST_NAMES = frozenset(
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
SURNAMES_FIRST = frozenset(
    """Zhang Wang Liu Chen Yang Huang Zhao Zhou Xu Wu Guo Lin Li Nguyen Tran Pham Hoang Huynh Phan Vu Vo Dang
    Bui Ngo Duong Kim Park Lee Choi""".split()
)

TITLE = (
    r"(?<![\w.])(?:Mrs|Mr|Ms|Mx|Miss|Dr|Prof|Professor|Sra|Srta|Sr|Sig\.ra|Sig|Dott\.ssa|Dott|"
    r"Herr|Frau|Mme|Mlle)"
)
TITLE_RE = re.compile(rf"{TITLE}\.?\s+(?P<name>{NAME_RUN})")
FIELD_RE = re.compile(
    r"(?i:\b(?P<label>patient(?:'s)?\s+name|name\s+of\s+(?:the\s+)?patient|full\s+name|first\s+name|"
    r"last\s+name|family\s+name|name|patient|pt|surname|nome|cognome|nombre|apellidos?|nom|pr[ée]nom|"
    r"referring\s+(?:physician|doctor|clinician)|attending(?:\s+physician)?|physician|radiologist|"
    r"(?:reported|signed|dictated|verified|read|requested)\s+by|next\s+of\s+kin|contact\s+person))"
    rf"\s*:[ \t]*(?P<name>(?:[{UP}]{{2,}}|{CAP}|{INITIAL})"
    rf"(?:,?[ \t]+(?:{PARTICLE}\s+)*(?:[{UP}]{{2,}}|{CAP}|{INITIAL})){{0,3}})"
)
FIRST_RE = re.compile(
    rf"\b(?P<name>(?:{'|'.join(sorted(FIRST_NAMES, key=len, reverse=True))})"
    rf"(?:\s+{INITIAL})?(?:\s+(?:{PARTICLE}\s+)*{CAP}){{1,3}})\b"
)
SURNAME_FIRST_RE = re.compile(
    rf"\b(?P<name>(?:{'|'.join(sorted(SURNAMES_FIRST, key=len, reverse=True))})(?:\s+{CAP}){{1,2}})\b"
)


# ---------------------------------------------------------------------------------------------------------
# DATE
# ---------------------------------------------------------------------------------------------------------

# Capitalised or upper case only ("march" and "may" are verbs); only abbreviations take a dot, so a full month
# name never swallows the full stop that ends its sentence.
MONTH_ANY = (
    r"(?:(?:" + "|".join(MONTHS_FULL + [m.upper() for m in MONTHS_FULL]) + r")\b"
    r"|(?:" + "|".join(MONTHS_ABBR + [m.upper() for m in MONTHS_ABBR]) + r")\b\.?)"
)
FOREIGN_MONTH = (
    r"(?:gennaio|febbraio|marzo|aprile|maggio|giugno|luglio|agosto|settembre|ottobre|novembre|dicembre|"
    r"enero|febrero|abril|mayo|junio|julio|septiembre|setiembre|octubre|noviembre|diciembre|"
    r"janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[uû]t|septembre|octobre|novembre|d[ée]cembre|"
    r"januar|februar|m[äa]rz|juni|juli|oktober|dezember)"
)
WEEKDAY = r"(?:(?:" + "|".join(WEEKDAYS) + r")|(?:Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)\.?)"
WD_PREFIX = rf"(?:{WEEKDAY},?\s+)?"
DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?(?!\d)"
DAY_RANGE = rf"(?:\s*(?:-|–|to|and)\s*{DAY})?"
YEAR = r"(?:(?:19|20)\d{2}|['’]\d{2})(?!\d)"

DATE_RES = [
    # 14 March 2020, 3rd of March, Monday 16 March 2020, 1 and 2 March; not "grade 3 March fracture"
    re.compile(rf"\b{WD_PREFIX}{DAY}{DAY_RANGE}(?:\s+of)?\s+{MONTH_ANY}(?:,?\s+{YEAR})?(?!\s+fracture)"),
    # March 14, 2020 / Mar 14 / January 8 to 12
    re.compile(rf"\b{WD_PREFIX}{MONTH_ANY}\s+{DAY}{DAY_RANGE}(?:,?\s+{YEAR})?"),
    # March 2020
    re.compile(rf"\b{MONTH_ANY},?\s+{YEAR}"),
    # 14-Mar-2020
    re.compile(rf"\b{DAY}[-/ ]{MONTH_ANY}[-/ ](?:(?:19|20)\d{{2}}|\d{{2}})\b"),
    # 12 marzo 2020, 5 de marzo de 2020, 14. März 2020 (year required: "mars", "mai" are words elsewhere)
    re.compile(rf"(?i:\b{DAY}\.?\s+(?:de\s+)?{FOREIGN_MONTH}\s+(?:de\s+)?(?:19|20)\d{{2}}\b)"),
]
# Numeric dates: same separator twice, validated below.
NUM_DATE_RE = re.compile(
    rf"(?<![\w./-]){WD_PREFIX}(?P<a>\d{{1,2}})(?P<sep>[/.-])(?P<b>\d{{1,2}})(?P=sep)(?P<c>\d{{4}}|\d{{2}})"
    r"(?![\w/]|[.-]\d)"
)
UNIT_AFTER = re.compile(r"\s*(?:mm|cm|m|mg|ml|g|kg|l|%|x|×)(?![\w-])", re.IGNORECASE)
ISO_DATE_RE = re.compile(
    r"(?<![\w./-])(?:19|20)\d{2}(?P<sep>[-/.])(?:0?[1-9]|1[0-2])(?P=sep)(?:[12]\d|3[01]|0?[1-9])(?![\w/]|[.-]\d)"
)


# ---------------------------------------------------------------------------------------------------------
# AGE
# ---------------------------------------------------------------------------------------------------------

UNITS = "one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUM_WORD = rf"(?:(?:{'|'.join(TENS)})(?:[-\s](?:{'|'.join(UNITS)}))?|{'|'.join(TEENS + UNITS)})"
DASH = r"[-‐–]"

AGE_OLD_RE = re.compile(
    rf"(?i:\b(?:\d{{1,3}}|{NUM_WORD})\s*{DASH}?\s*(?:years?|yrs?|months?|mos?)\s*{DASH}?\s*old\b)"
)
AGE_YO_RE = re.compile(r"\b\d{1,3}\s*(?:y/o|y\.o\.?|yo)(?![A-Za-z])")
AGE_PAREN_RE = re.compile(r"\(\s*(?P<v>\d{1,3}\s*(?:y|yrs?)\.?)\s*[,)]")
AGE_FIELD_RE = re.compile(
    r"(?i:\b(?:aged?|age\s+of|(?:patient|man|woman|male|female)\s+of(?=\s*\d{1,3}\s*y))\s*[:=]?\s*)(?P<v>\d{1,3}(?:\s*(?:years?|yrs?|y)\b(?:\s*old\b)?)?)(?![\d.,]\d)"
)
AGE_YRS_RE = re.compile(r"\b\d{1,3}\s*yrs?\b")
NOT_AGE_BEFORE = re.compile(
    r"(?i:\b(?:for|over|past|last|after|within|since|x|pack|of|than|about|around|approximately)\s*$)"
)
NOT_AGE_AFTER = re.compile(
    r"(?i:^\s*(?:ago|history|prior|earlier|later|before|after|of|duration|follow|post|since)\b)"
)


# ---------------------------------------------------------------------------------------------------------
# PHONE
# ---------------------------------------------------------------------------------------------------------

PHONE_LABEL_RE = re.compile(
    r"(?i:\b(?:tel(?:ephone)?|phone|mob(?:ile)?|cell(?:phone)?|fax|pager|t[ée]l[ée]fono|telefono|t[ée]l)\b\.?"
    r"\s*(?:no\.?|number|#)?\s*[:.]?\s*)"
    r"(?P<v>\+?(?:\(\d{1,5}\)|\d{1,5})(?:[\s.-]?(?:\(\d{1,5}\)|\d{1,5})){1,6})"
)
PHONE_INTL_RE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?(?:\(\d{1,4}\)|\d{1,5})){2,6}")
PHONE_US_RE = re.compile(r"(?<![\w.-])(?:\(\d{3}\)\s*\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])")
PHONE_NATIONAL_RE = re.compile(r"(?<![\w.,+/-])0\d{1,4}(?:[\s-]\d{2,5}){1,3}(?![\w]|[.,/-]\d)")


# ---------------------------------------------------------------------------------------------------------
# EMAIL, URL
# ---------------------------------------------------------------------------------------------------------

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
URL_RE = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'\])]+")
DOMAIN_RE = re.compile(
    r"(?<![\w@.])(?:[A-Za-z0-9-]+\.)+(?:com|org|net|edu|gov|info|io|it|es|fr|de|uk|cn|vn|kr|jp|ch|nl|be|at|eu)"
    r"\b(?:/[^\s<>\"'\])]*)?"
)


# ---------------------------------------------------------------------------------------------------------
# ADDRESS
# ---------------------------------------------------------------------------------------------------------

STREET_TYPE = (
    r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Place|Pl\.?"
    r"|Square|Sq\.?|Terrace|Close|Crescent|Highway|Hwy\.?|Parkway|Pkwy\.?|Way|Row|Strasse|Straße|Str\.|Gasse"
    r"|Weg|Allee|Platz)(?![\w])"
)
STREET_PREFIX = (
    r"(?:Via|Viale|Vicolo|Corso|Piazza|Piazzale|Largo|Calle|Avenida|Avda\.|Paseo|Plaza|Carrer|Rua|Rue|"
    r"Boulevard|Bd\.?|Avenue|Chemin|Place|Quai)"
)
STREET_NAME = rf"(?:{CAP}|\d{{1,3}}(?:st|nd|rd|th)|First|Second|Third)"
CONNECT = r"(?:di|del|della|delle|dei|degli|de|la|las|los|le|les|du|des|d['’])"
US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()
STATE = r"(?:" + "|".join(US_STATES) + r")"
ZIP = r"\d{5}(?:-\d{4})?(?!\d)"
UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b"
CITY = rf"{CAP}(?:\s+{CAP}){{0,2}}"
# ", Boston, MA 02114" / ", Milano 20121" / ", 75004 Paris" / ", London NW1 6XE": a postcode is required.
CITY_TAIL = (
    rf"(?:,\s*(?:{CITY},?\s+{STATE}\s+{ZIP}|{CITY},?\s+{ZIP}|\d{{4,5}}\s+{CITY}|"
    rf"{CITY},?\s+{UK_POSTCODE}|{UK_POSTCODE}))?"
)
DIRECTIONAL = r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
ADDRESS_RES = [
    # 12 Baker Street, 200 First St SW
    re.compile(
        rf"(?<![\w.,])\d{{1,5}}[A-Za-z]?,?\s+(?:{STREET_NAME}\s+){{1,4}}{STREET_TYPE}{DIRECTIONAL}{CITY_TAIL}"
    ),
    # 14 Via Roma, Via Roma 14, Calle de Alcalá 45, 8 Rue de Rivoli
    re.compile(
        rf"(?:(?<![\w.,])\d{{1,5}}[A-Za-z]?,?\s+)?\b{STREET_PREFIX}\s+(?:{CONNECT}\s*)*{CAP}"
        rf"(?:\s+(?:{CONNECT}\s*)*{CAP}){{0,3}}(?:,?\s+\d{{1,5}}[A-Za-z]?(?![\w.,]\d|\w))?{CITY_TAIL}"
    ),
    # Hauptstraße 12
    re.compile(
        rf"\b[{UP}][{LO}]+(?:straße|strasse|str\.|gasse|weg|allee|platz|ring|damm)\s+\d{{1,4}}[a-z]?\b{CITY_TAIL}"
    ),
    # Boston, MA 02114 / NY 10001
    re.compile(rf"(?:\b{CITY},\s+)?\b{STATE}\s+{ZIP}"),
    # UK postcode
    re.compile(rf"\b{UK_POSTCODE}"),
]
# Cities that may stand before/after a postcode without a street ("Milano 20121", "20122 Milan").
CITIES = (
    "Milan|Milano|Rome|Roma|Turin|Torino|Naples|Napoli|Bologna|Florence|Firenze|Genoa|Genova|Venice|Venezia|"
    "Padua|Padova|Verona|Bergamo|Brescia|Lodi|Cremona|Pavia|Piacenza|Madrid|Barcelona|Valencia|Sevilla|Seville|"
    "Paris|Lyon|Marseille|Lille|Strasbourg|Berlin|Munich|München|Hamburg|Frankfurt|Cologne|Köln|Vienna|Wien|"
    "Zurich|Zürich|Geneva|Genève|Brussels|Amsterdam|Lisbon|Lisboa|Porto|Wuhan|Beijing|Shanghai|Hanoi|"
    "Seoul|Tokyo|New York|Boston|Chicago|Houston|Seattle"
)
CITY_POSTCODE_RE = re.compile(rf"\b(?:(?:{CITIES}),?\s+\d{{4,5}}|\d{{5}}\s+(?:{CITIES}))\b")


# ---------------------------------------------------------------------------------------------------------
# ID
# ---------------------------------------------------------------------------------------------------------

NUM_WORDS = r"(?:number|num\.?|no\.?|nr\.?|#|id)"
ID_LABEL_RE = re.compile(
    r"(?:(?i:\b(?:mrn|m\.r\.n\.?|medical\s+record(?:\s+" + NUM_WORDS + r")?|"
    r"(?:hospital\s+|health\s+)?record\s+" + NUM_WORDS + r"|patient\s+(?:id|identifier|number|no\.?|nr\.?|#)|"
    r"pid|accession(?:\s+" + NUM_WORDS + r")?|acc\.?\s*(?:no\.?|#)|case(?:\s+" + NUM_WORDS + r")?|"
    r"nhs(?:\s+" + NUM_WORDS + r")?|ssn|social\s+security(?:\s+" + NUM_WORDS + r")?|study\s+id|"
    r"(?:encounter|visit|admission|specimen|insurance|policy|reference|ref\.?)\s+" + NUM_WORDS + r"|"
    r"encounter|rid)(?!\w))|\bID\b)"
    r"\s*[:#]?\s*(?:#\s*)?"
    r"(?P<v>(?:[A-Z]{1,4}-?)?\d+(?:[-/.]\d+)*(?:[ -]\d{3,4}(?!\d|[.,]\d))*[A-Z]?)(?![\w])"
)
SSN_RE = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
LONG_DIGITS_RE = re.compile(
    r"(?<![\w.,])\d{6,}(?![\w]|[.,]\d)(?!\s*(?:/|x\b|×|cells|copies|iu\b|u/|mg|ng|µ|μ|mcg|per\b|mm))",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------------------
# HOSPITAL
# ---------------------------------------------------------------------------------------------------------

# "St." is the only dotted word, so "Rossi. Hospital" stays apart; U+FFFD stands in for a lost apostrophe.
HCAP = rf"(?:(?:St|Ste|Mt)\.|[{UP}][\w'’\ufffd-]*)"
HCONN = r"(?:of|the|and|&|de|del|della|di|da|la|le|du|des|y|for)"
HOSPITAL_SUFFIX = (
    r"(?:Hospitals?|Clinic|(?:Medical|Clinical|Health|Hospital|Cancer|Heart|Trauma)\s+Cent(?:er|re)|Infirmary"
    r"|Health\s+System|Healthcare|Medical\s+College)"
)
HOSPITAL_PREFIX = (
    r"(?:Ospedale|Policlinico|Universitätsklinikum|Universitatsklinikum|Klinikum|Hôpital|Hopital|"
    r"Clínica|Clinica|Clinique|Krankenhaus|Centre\s+Hospitalier(?:\s+Universitaire)?|Azienda\s+Ospedaliera|"
    r"Presidio\s+Ospedaliero|Spital|"
    # Spanish/Portuguese order, only before a word that cannot be English ("Hospital Stay" stays).
    r"Hospital(?=\s+(?:de|del|do|da|dos|das|San|Santa|Sant|São|Sao|Universitario|Universitari|Universitário|"
    r"Clínic|Clinic|Clínico|Clinico|Militar|Infantil|Italiano|Alemán|Aleman|Británico|Britanico|Israelita|"
    r"Nacional|Provincial|Virgen|Nuestra|Reina|Príncipe|Principe|Regional|Central|General)\b))"
)
# "... Clinic of Xiangyang First People's Hospital": the "of" part may itself end in a suffix.
OF_PLACE = rf"(?:\s+of\s+(?:the\s+)?(?:(?:{HCAP}\s+){{0,4}}{HOSPITAL_SUFFIX}\b|{HCAP}(?:\s+{HCAP}){{0,2}}))?"
HOSPITAL_SUFFIX_RE = re.compile(
    rf"\b{HCAP}(?:\s+(?:{HCONN}\s+)*{HCAP}){{0,5}}\s+{HOSPITAL_SUFFIX}\b{OF_PLACE}"
)
HOSPITAL_PREFIX_RE = re.compile(rf"\b{HOSPITAL_PREFIX}(?:\s+(?:{HCONN}\s+)*{HCAP}){{1,5}}")
# Never trimmed: the suffix words themselves, and month/weekday words ("Hospital del Mar").
HOSPITAL_WORDS = frozenset(
    "hospital hospitals clinic infirmary healthcare college center centre system general university".split()
    + ["st"]
    + [w.lower() for w in MONTHS_FULL + MONTHS_ABBR + WEEKDAYS]
)


# ---------------------------------------------------------------------------------------------------------
# Label-leak guard
# ---------------------------------------------------------------------------------------------------------

DIAGNOSIS_TERMS = [
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
GLUED = r"covid[-\s]?(?:20)?19|covid|sars[-\s]?cov[-\s]?2"
DIAGNOSIS_RE = re.compile(
    r"(?:(?<![\w-])(?:" + "|".join(DIAGNOSIS_TERMS) + r")|" + GLUED + r")(?![\w])", re.IGNORECASE
)
TEST_WORD = r"(?:rt[-\s]?pcr|pcr|swabs?|tests?|testing|assay|serology|serologies|antigen|rna|dna|cultures?)"
KEEP = r"(?:pneumonia|consolidat|opacit|fever|cough)"
TEST_RESULT = [
    rf"{TEST_WORD}\b(?:(?!{KEEP})[^.;,\n]){{0,40}}?\b(?:positive|negative|detected)",
    rf"(?:positive|negative)\s+{TEST_WORD}(?:\s+tests?)?",
    r"(?:tested|was|were|is|are)\s+(?:positive|negative)",
    r"(?:positive|negative)\s+for",
]
TEST_RESULT_RE = re.compile(r"\b(?:" + "|".join(TEST_RESULT) + r")\b", re.IGNORECASE)
