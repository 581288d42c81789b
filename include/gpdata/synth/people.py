"""Synthetic people and places: names, streets, towns, postcodes/LSOAs, age pyramid, prevalence."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MALE_NAMES = (
    "Oliver", "George", "Harry", "Jack", "Jacob", "Noah", "Charlie", "Muhammad", "Thomas", "Oscar",
    "William", "James", "Henry", "Leo", "Alfie", "Joshua", "Freddie", "Archie", "Ethan", "Isaac",
    "Alexander", "Joseph", "Edward", "Samuel", "Max", "Daniel", "Arthur", "Lucas", "Mohammed", "Logan",
    "Theo", "Harrison", "Benjamin", "Mason", "Sebastian", "Finley", "Adam", "Dylan", "Zachary", "Riley",
    "David", "John", "Michael", "Paul", "Andrew", "Mark", "Richard", "Stephen", "Peter", "Christopher",
    "Robert", "Anthony", "Gary", "Kevin", "Ian", "Simon", "Martin", "Neil", "Graham", "Keith",
    "Brian", "Kenneth", "Derek", "Colin", "Raymond", "Trevor", "Geoffrey", "Dennis", "Roy", "Frank",
    "Amir", "Arjun", "Ravi", "Sanjay", "Imran", "Tariq", "Bilal", "Hassan", "Kwame", "Chinedu",
    "Tunde", "Kofi", "Emeka", "Piotr", "Tomasz", "Łukasz", "Andrzej", "Mateusz", "Wei", "Jun",
    "Seán", "Ciarán", "Declan", "Rhys", "Dafydd", "Callum", "Hamish", "Jamal", "Marcus", "Tyrone",
)
FEMALE_NAMES = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia",
    "Grace", "Freya", "Willow", "Florence", "Emily", "Ella", "Poppy", "Evie", "Elsie", "Charlotte",
    "Evelyn", "Sienna", "Sofia", "Daisy", "Phoebe", "Sophie", "Alice", "Harper", "Matilda", "Ruby",
    "Emilia", "Maya", "Millie", "Isabelle", "Eva", "Chloe", "Jessica", "Lucy", "Hannah", "Zoë",
    "Sarah", "Emma", "Laura", "Rebecca", "Rachel", "Claire", "Nicola", "Helen", "Joanne", "Lisa",
    "Susan", "Karen", "Julie", "Amanda", "Michelle", "Tracey", "Deborah", "Angela", "Elaine", "Dawn",
    "Margaret", "Patricia", "Barbara", "Jean", "Doreen", "Joan", "Dorothy", "Irene", "Sheila", "Brenda",
    "Priya", "Aisha", "Fatima", "Ayesha", "Zainab", "Anjali", "Nisha", "Sunita", "Mariam", "Amina",
    "Ngozi", "Adaeze", "Chiamaka", "Abena", "Yetunde", "Agnieszka", "Katarzyna", "Magdalena", "Zofia", "Mei",
    "Ling", "Siobhán", "Aoife", "Niamh", "Siân", "Cerys", "Eilidh", "Morag", "Keisha", "Shanice",
)
FAMILY_NAMES = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson",
    "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall",
    "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin", "Cooper", "Hill",
    "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison", "Morgan", "Allen",
    "James", "Scott", "Phillips", "Watson", "Davis", "Parker", "Price", "Bennett", "Young", "Griffiths",
    "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey", "Collins", "Bell", "Shaw", "Murphy",
    "Miller", "Cox", "Richards", "Khan", "Marshall", "Anderson", "Simpson", "Ellis", "Adams", "Singh",
    "Begum", "Wilkinson", "Foster", "Chapman", "Powell", "Webb", "Rogers", "Gray", "Mason", "Ali",
    "Hussain", "Campbell", "Matthews", "Owen", "Palmer", "Holmes", "Mills", "Barnes", "Knight", "Lloyd",
    "Butler", "Russell", "Barker", "Fisher", "Stevens", "Jenkins", "Dixon", "Fletcher", "Okafor", "Mensah",
    "Adeyemi", "Nowak", "Kowalski", "Wiśniewski", "Chen", "Wang", "Nguyen", "Sharma", "Kaur", "Ahmed",
    "Rahman", "Chowdhury", "O'Brien", "O'Connor", "MacDonald", "McLeod", "Ó Briain", "Fernandes", "Costa",
    "Da Silva",
)
STREET_NAMES = (
    "Oak", "Ash", "Beech", "Elm", "Willow", "Cedar", "Maple", "Birch", "Holly", "Hawthorn",
    "Station", "Church", "Mill", "School", "Park", "Victoria", "Albert", "Queens", "Kings", "Chapel",
    "Bridge", "Market", "Green", "Manor", "Orchard", "Meadow", "Springfield", "Westfield", "Highfield",
    "Grange", "Moor", "Hall", "Windsor", "York", "Clarence", "Nelson", "Brook", "Rose", "Primrose",
    "Cross", "Forge", "Rectory", "Well", "Cherry", "Lime",
)
STREET_TYPES = ("Road", "Street", "Lane", "Avenue", "Close", "Drive", "Way", "Crescent", "Grove", "Terrace",
                "Gardens", "Court", "Place", "View", "Walk")
SURGERY_NAMES = (
    "Oakfield", "Riverside", "The Willows", "Parkside", "Meadowbank", "Church View", "Beechwood",
    "Highfield", "Station Road", "Market Place", "Ashgrove", "Millbrook", "Greenside", "Valley",
    "Northgate", "Southfield", "Eastgate", "Westbourne", "Brookside", "The Elms", "Castle", "Abbey",
    "Bridge Street", "Kingsway", "Queensway", "Holly Tree", "Larchwood", "Fernlea", "Hillside", "Moorside",
)

# Postcode areas with a principal town (all in England, as the LSOA codes are E01...).
AREAS = (
    ("LS", "Leeds"), ("BD", "Bradford"), ("HX", "Halifax"), ("WF", "Wakefield"), ("HD", "Huddersfield"),
    ("S", "Sheffield"), ("DN", "Doncaster"), ("HU", "Hull"), ("YO", "York"), ("HG", "Harrogate"),
    ("M", "Manchester"), ("L", "Liverpool"), ("B", "Birmingham"), ("NE", "Newcastle upon Tyne"),
    ("SR", "Sunderland"), ("DH", "Durham"), ("TS", "Middlesbrough"), ("LA", "Lancaster"), ("PR", "Preston"),
    ("BB", "Blackburn"), ("BL", "Bolton"), ("OL", "Oldham"), ("SK", "Stockport"), ("WA", "Warrington"),
    ("WN", "Wigan"), ("CH", "Chester"), ("CW", "Crewe"), ("ST", "Stoke-on-Trent"), ("DE", "Derby"),
    ("NG", "Nottingham"), ("LE", "Leicester"), ("LN", "Lincoln"), ("PE", "Peterborough"), ("NR", "Norwich"),
    ("IP", "Ipswich"), ("CB", "Cambridge"), ("CO", "Colchester"), ("CM", "Chelmsford"), ("OX", "Oxford"),
    ("RG", "Reading"), ("SO", "Southampton"), ("PO", "Portsmouth"), ("BH", "Bournemouth"), ("BS", "Bristol"),
    ("BA", "Bath"), ("GL", "Gloucester"), ("EX", "Exeter"), ("PL", "Plymouth"), ("TR", "Truro"),
    ("TA", "Taunton"), ("SN", "Swindon"), ("SP", "Salisbury"), ("BN", "Brighton"), ("CT", "Canterbury"),
    ("ME", "Rochester"), ("TN", "Tunbridge Wells"), ("GU", "Guildford"), ("CV", "Coventry"),
    ("WV", "Wolverhampton"), ("WR", "Worcester"),
)
N_SLOTS = 300  # distinct synthetic areas (60 postcode areas x 5 blocks of districts)
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # letters used in the inward code (no C, I, K, M, O, V)
_GEO_TAG = 7_001  # seeds the fixed synthetic geography; independent of the generator seed

# England population by 5-year age band (0-4 ... 95-100), approximate 2021 census shares (%).
AGE_BANDS = (5.4, 5.9, 6.0, 5.6, 6.0, 6.6, 6.9, 6.7, 6.3, 6.4, 6.9, 6.8, 5.9, 5.1, 5.0, 3.7, 2.5, 1.5,
             0.7, 0.2)


@dataclass(frozen=True)
class Area:
    slot: int
    town: str
    postcodes: tuple[str, ...]
    lsoas: tuple[str, ...]  # lsoas[i] is the LSOA of postcodes[i]

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.postcodes, self.lsoas, strict=True))


@lru_cache(maxsize=64)
def build_area(slot: int) -> Area:
    """The fixed synthetic area for `slot` (0 <= slot < N_SLOTS): a few outward codes, 30-80 LSOAs,
    several postcodes per LSOA.  Slots never share postcodes or LSOA codes."""
    slot %= N_SLOTS
    rng = np.random.default_rng([_GEO_TAG, slot])
    area, town = AREAS[slot % len(AREAS)]
    block = slot // len(AREAS)
    n_out = int(rng.integers(2, 6))
    outwards = [f"{area}{block * 5 + k + 1}" for k in range(n_out)]
    n_lsoa = int(rng.integers(30, 81))
    postcodes: list[str] = []
    lsoas: list[str] = []
    used: set[str] = set()
    for j in range(n_lsoa):
        lsoa = f"E01{1000 + slot * 100 + j:06d}"
        outward = outwards[int(rng.integers(n_out))]
        sector = int(rng.integers(10))
        for _ in range(int(rng.integers(4, 13))):
            while True:
                a, b = rng.integers(len(_INWARD_LETTERS), size=2)
                pc = f"{outward} {sector}{_INWARD_LETTERS[a]}{_INWARD_LETTERS[b]}"
                if pc not in used:
                    break
            used.add(pc)
            postcodes.append(pc)
            lsoas.append(lsoa)
    return Area(slot, town, tuple(postcodes), tuple(lsoas))


def sample_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ages in years (float, 0 <= age < 101) following the England age pyramid."""
    p = np.array(AGE_BANDS) / sum(AGE_BANDS)
    band = rng.choice(len(p), size=n, p=p)
    return band * 5.0 + rng.random(n) * 5.0 + (band == len(p) - 1) * rng.random(n)


def prevalence(age: np.ndarray, male: np.ndarray) -> dict[str, np.ndarray]:
    """Probability of each long-term condition by age (years) and sex (roughly QOF England levels)."""
    a = age

    def ramp(xs: tuple[float, ...], ys: tuple[float, ...]) -> np.ndarray:
        return np.interp(a, xs, ys)

    hyp = ramp((0, 18, 30, 40, 50, 60, 70, 80, 101), (0, 0.001, 0.01, 0.05, 0.13, 0.27, 0.42, 0.55, 0.6))
    dm2 = ramp((0, 18, 30, 40, 50, 60, 70, 80, 101), (0, 0.001, 0.01, 0.03, 0.07, 0.12, 0.16, 0.17, 0.15))
    dm2 = dm2 * np.where(male, 1.2, 0.85)
    dm1 = np.where(a >= 2, 0.005, 0.0)
    copd = ramp((0, 35, 45, 55, 65, 75, 101), (0, 0.001, 0.006, 0.02, 0.045, 0.07, 0.08))
    hf = ramp((0, 40, 55, 65, 75, 85, 101), (0, 0.001, 0.005, 0.012, 0.03, 0.07, 0.09))
    hf = hf * np.where(male, 1.2, 0.85)
    ld = np.full(a.shape, 0.005)
    asthma = ramp((0, 2, 6, 15, 40, 101), (0, 0.02, 0.08, 0.09, 0.065, 0.06))
    return {"hyp": hyp, "dm2": dm2, "dm1": dm1, "copd": copd, "hf": hf, "ld": ld, "asthma": asthma}


# Typical years between diagnosis and now (mean of an exponential), and the youngest onset age.
ONSET = {
    "hyp": (9.0, 25.0), "dm2": (8.0, 25.0), "dm1": (15.0, 1.0), "copd": (7.0, 35.0), "hf": (5.0, 40.0),
    "ld": (0.0, 0.0), "asthma": (12.0, 1.0),
}
CONDITION_ORDER = ("hyp", "dm2", "dm1", "copd", "hf", "ld", "asthma")
