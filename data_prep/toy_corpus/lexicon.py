"""Lexicon of the toy corpus: nouns, adjectives, verbs, places and numbers with their German and French forms.

Each entry carries what the grammar needs for agreement: German gender and plural (and n-declension), French gender and
plural, verb conjugations; the English side is the source sentence read by eSpeak NG.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    de: str
    de_pl: str
    de_g: str  # m / f / n
    fr: str
    fr_pl: str
    fr_g: str  # m / f
    de_weak: bool = False  # n-declension: accusative/dative singular take -n (der Junge -> den Jungen)


def _n(en: str, en_pl: str, de: str, de_pl: str, de_g: str, fr: str, fr_pl: str, fr_g: str, weak: bool = False) -> Noun:
    return Noun(en, en_pl, de, de_pl, de_g, fr, fr_pl, fr_g, weak)


ANIMATES = [
    _n("dog", "dogs", "Hund", "Hunde", "m", "chien", "chiens", "m"),
    _n("cat", "cats", "Katze", "Katzen", "f", "chat", "chats", "m"),
    _n("man", "men", "Mann", "Männer", "m", "homme", "hommes", "m"),
    _n("woman", "women", "Frau", "Frauen", "f", "femme", "femmes", "f"),
    _n("child", "children", "Kind", "Kinder", "n", "enfant", "enfants", "m"),
    _n("teacher", "teachers", "Lehrer", "Lehrer", "m", "professeur", "professeurs", "m"),
    _n("bird", "birds", "Vogel", "Vögel", "m", "oiseau", "oiseaux", "m"),
    _n("horse", "horses", "Pferd", "Pferde", "n", "cheval", "chevaux", "m"),
    _n("girl", "girls", "Mädchen", "Mädchen", "n", "fille", "filles", "f"),
    _n("boy", "boys", "Junge", "Jungen", "m", "garçon", "garçons", "m", weak=True),
    _n("friend", "friends", "Freund", "Freunde", "m", "ami", "amis", "m"),
    _n("farmer", "farmers", "Bauer", "Bauern", "m", "fermier", "fermiers", "m", weak=True),
    _n("doctor", "doctors", "Arzt", "Ärzte", "m", "médecin", "médecins", "m"),
]

THINGS = [
    _n("ball", "balls", "Ball", "Bälle", "m", "balle", "balles", "f"),
    _n("apple", "apples", "Apfel", "Äpfel", "m", "pomme", "pommes", "f"),
    _n("book", "books", "Buch", "Bücher", "n", "livre", "livres", "m"),
    _n("car", "cars", "Auto", "Autos", "n", "voiture", "voitures", "f"),
    _n("cup", "cups", "Tasse", "Tassen", "f", "tasse", "tasses", "f"),
    _n("hat", "hats", "Hut", "Hüte", "m", "chapeau", "chapeaux", "m"),
    _n("key", "keys", "Schlüssel", "Schlüssel", "m", "clé", "clés", "f"),
    _n("flower", "flowers", "Blume", "Blumen", "f", "fleur", "fleurs", "f"),
    _n("bottle", "bottles", "Flasche", "Flaschen", "f", "bouteille", "bouteilles", "f"),
    _n("shoe", "shoes", "Schuh", "Schuhe", "m", "chaussure", "chaussures", "f"),
    _n("pencil", "pencils", "Stift", "Stifte", "m", "crayon", "crayons", "m"),
    _n("letter", "letters", "Brief", "Briefe", "m", "lettre", "lettres", "f"),
    _n("egg", "eggs", "Ei", "Eier", "n", "œuf", "œufs", "m"),
    _n("umbrella", "umbrellas", "Regenschirm", "Regenschirme", "m", "parapluie", "parapluies", "m"),
    _n("bag", "bags", "Tasche", "Taschen", "f", "sac", "sacs", "m"),
    _n("lamp", "lamps", "Lampe", "Lampen", "f", "lampe", "lampes", "f"),
    _n("shirt", "shirts", "Hemd", "Hemden", "n", "chemise", "chemises", "f"),
    _n("picture", "pictures", "Bild", "Bilder", "n", "tableau", "tableaux", "m"),
    _n("chair", "chairs", "Stuhl", "Stühle", "m", "chaise", "chaises", "f"),
    _n("glass", "glasses", "Glas", "Gläser", "n", "verre", "verres", "m"),
    _n("box", "boxes", "Kiste", "Kisten", "f", "boîte", "boîtes", "f"),
    _n("plate", "plates", "Teller", "Teller", "m", "assiette", "assiettes", "f"),
    _n("orange", "oranges", "Orange", "Orangen", "f", "orange", "oranges", "f"),
]

# (noun, allowed English prepositions); places are always singular and definite.
PLACES = [
    (_n("table", "tables", "Tisch", "Tische", "m", "table", "tables", "f"), ("on", "under", "next to", "behind")),
    (_n("bed", "beds", "Bett", "Betten", "n", "lit", "lits", "m"), ("on", "under", "next to")),
    (_n("door", "doors", "Tür", "Türen", "f", "porte", "portes", "f"), ("next to", "behind", "in front of")),
    (_n("window", "windows", "Fenster", "Fenster", "n", "fenêtre", "fenêtres", "f"), ("next to", "in front of")),
    (_n("house", "houses", "Haus", "Häuser", "n", "maison", "maisons", "f"), ("in", "behind", "in front of")),
    (_n("garden", "gardens", "Garten", "Gärten", "m", "jardin", "jardins", "m"), ("in",)),
    (_n("kitchen", "kitchens", "Küche", "Küchen", "f", "cuisine", "cuisines", "f"), ("in",)),
    (_n("tree", "trees", "Baum", "Bäume", "m", "arbre", "arbres", "m"), ("under", "behind", "next to")),
    (_n("shelf", "shelves", "Regal", "Regale", "n", "étagère", "étagères", "f"), ("on", "next to")),
    (_n("school", "schools", "Schule", "Schulen", "f", "école", "écoles", "f"), ("in", "behind", "in front of")),
]

# English preposition -> (German preposition taking the dative, French preposition)
PREPS = {
    "on": ("auf", "sur"),
    "under": ("unter", "sous"),
    "next to": ("neben", "à côté de"),
    "in": ("in", "dans"),
    "behind": ("hinter", "derrière"),
    "in front of": ("vor", "devant"),
}


@dataclass(frozen=True)
class Adj:
    en: str
    de: str  # stem; predicative form
    fr: tuple[str, str, str, str]  # m sg, f sg, m pl, f pl
    fr_pre: bool = False  # French places it before the noun
    fr_m_vowel: str = ""  # masculine singular before a vowel (bel, vieil, nouvel)


COLOURS = [
    Adj("red", "rot", ("rouge", "rouge", "rouges", "rouges")),
    Adj("blue", "blau", ("bleu", "bleue", "bleus", "bleues")),
    Adj("green", "grün", ("vert", "verte", "verts", "vertes")),
    Adj("yellow", "gelb", ("jaune", "jaune", "jaunes", "jaunes")),
    Adj("black", "schwarz", ("noir", "noire", "noirs", "noires")),
    Adj("white", "weiß", ("blanc", "blanche", "blancs", "blanches")),
    Adj("grey", "grau", ("gris", "grise", "gris", "grises")),
    Adj("brown", "braun", ("brun", "brune", "bruns", "brunes")),
]

SIZES = [
    Adj("small", "klein", ("petit", "petite", "petits", "petites"), True),
    Adj("big", "groß", ("grand", "grande", "grands", "grandes"), True),
    Adj("old", "alt", ("vieux", "vieille", "vieux", "vieilles"), True, "vieil"),
    Adj("new", "neu", ("nouveau", "nouvelle", "nouveaux", "nouvelles"), True, "nouvel"),
    Adj("beautiful", "schön", ("beau", "belle", "beaux", "belles"), True, "bel"),
]


@dataclass(frozen=True)
class Verb:
    en: tuple[str, str]  # base, third person singular
    de: tuple[str, str, str]  # ich, er/sie/es, wir/sie (finite part)
    fr: tuple[str, str, str, str]  # je, il, nous, ils
    de_prefix: str = ""  # separable prefix, goes to the end of the clause


VERBS = [
    Verb(("see", "sees"), ("sehe", "sieht", "sehen"), ("vois", "voit", "voyons", "voient")),
    Verb(("buy", "buys"), ("kaufe", "kauft", "kaufen"), ("achète", "achète", "achetons", "achètent")),
    Verb(("have", "has"), ("habe", "hat", "haben"), ("ai", "a", "avons", "ont")),
    Verb(("find", "finds"), ("finde", "findet", "finden"), ("trouve", "trouve", "trouvons", "trouvent")),
    Verb(("carry", "carries"), ("trage", "trägt", "tragen"), ("porte", "porte", "portons", "portent")),
    Verb(("take", "takes"), ("nehme", "nimmt", "nehmen"), ("prends", "prend", "prenons", "prennent")),
    Verb(("like", "likes"), ("mag", "mag", "mögen"), ("aime", "aime", "aimons", "aiment")),
    Verb(("sell", "sells"), ("verkaufe", "verkauft", "verkaufen"), ("vends", "vend", "vendons", "vendent")),
    Verb(("wash", "washes"), ("wasche", "wäscht", "waschen"), ("lave", "lave", "lavons", "lavent")),
    Verb(("count", "counts"), ("zähle", "zählt", "zählen"), ("compte", "compte", "comptons", "comptent")),
    Verb(("paint", "paints"), ("male", "malt", "malen"), ("peins", "peint", "peignons", "peignent")),
    Verb(("look for", "looks for"), ("suche", "sucht", "suchen"), ("cherche", "cherche", "cherchons", "cherchent")),
    Verb(("pick up", "picks up"), ("hebe", "hebt", "heben"), ("ramasse", "ramasse", "ramassons", "ramassent"), "auf"),
    Verb(
        ("bring back", "brings back"),
        ("bringe", "bringt", "bringen"),
        ("rapporte", "rapporte", "rapportons", "rapportent"),
        "zurück",
    ),
    Verb(("throw away", "throws away"), ("werfe", "wirft", "werfen"), ("jette", "jette", "jetons", "jettent"), "weg"),
    Verb(("pack", "packs"), ("packe", "packt", "packen"), ("emballe", "emballe", "emballons", "emballent"), "ein"),
]

# (English, German, French) sentence-initial time adverbials; German then inverts subject and verb (verb second).
TIMES = [
    ("today", "heute", "aujourd'hui"),
    ("tomorrow", "morgen", "demain"),
    ("now", "jetzt", "maintenant"),
    ("every day", "jeden Tag", "chaque jour"),
    ("in the morning", "am Morgen", "le matin"),
    ("in the evening", "am Abend", "le soir"),
]

# person: 1sg, 1pl, 3sg, 3pl -> (English, German, French)
PRONOUNS = [
    ("I", "ich", "je", "1sg"),
    ("we", "wir", "nous", "1pl"),
    ("he", "er", "il", "3sg"),
    ("she", "sie", "elle", "3sg"),
    ("they", "sie", "ils", "3pl"),
]
NAMES = ["Anna", "Peter", "Maria", "Paul", "Lisa", "Thomas", "Julia", "Max"]

NUMBERS = {  # 2..20
    2: ("two", "zwei", "deux"),
    3: ("three", "drei", "trois"),
    4: ("four", "vier", "quatre"),
    5: ("five", "fünf", "cinq"),
    6: ("six", "sechs", "six"),
    7: ("seven", "sieben", "sept"),
    8: ("eight", "acht", "huit"),
    9: ("nine", "neun", "neuf"),
    10: ("ten", "zehn", "dix"),
    11: ("eleven", "elf", "onze"),
    12: ("twelve", "zwölf", "douze"),
    13: ("thirteen", "dreizehn", "treize"),
    14: ("fourteen", "vierzehn", "quatorze"),
    15: ("fifteen", "fünfzehn", "quinze"),
    16: ("sixteen", "sechzehn", "seize"),
    17: ("seventeen", "siebzehn", "dix-sept"),
    18: ("eighteen", "achtzehn", "dix-huit"),
    19: ("nineteen", "neunzehn", "dix-neuf"),
    20: ("twenty", "zwanzig", "vingt"),
}
