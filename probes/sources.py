"""Hand-written word lists from which the built-in probe datasets are generated.

Cities are well known and have one obvious country (no Valencia, Santiago or Birmingham); none is
named after its country (no Mexico City), so the statement's truth cannot be read off the string.
"""

from __future__ import annotations

# country as written in a sentence -> its cities
CITIES: dict[str, tuple[str, ...]] = {
    "France": ("Paris", "Marseille", "Lyon", "Toulouse", "Nice", "Bordeaux", "Lille", "Strasbourg"),
    "Germany": ("Berlin", "Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig"),
    "Italy": ("Rome", "Milan", "Naples", "Turin", "Florence", "Venice", "Bologna", "Palermo", "Genoa"),
    "Spain": ("Madrid", "Barcelona", "Seville", "Bilbao", "Malaga", "Zaragoza", "Granada"),
    "the United Kingdom": ("London", "Manchester", "Liverpool", "Edinburgh", "Glasgow", "Leeds", "Bristol"),
    "Russia": ("Moscow", "Saint Petersburg", "Novosibirsk", "Yekaterinburg", "Kazan", "Vladivostok"),
    "China": ("Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan", "Nanjing", "Hangzhou",
              "Tianjin", "Chongqing"),
    "Japan": ("Tokyo", "Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo", "Hiroshima", "Kobe", "Fukuoka"),
    "India": ("Mumbai", "Delhi", "Bangalore", "Chennai", "Kolkata", "Pune", "Jaipur", "Ahmedabad"),
    "the United States": ("New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia",
                          "San Francisco", "Seattle", "Boston", "Miami", "Denver", "Atlanta", "Las Vegas",
                          "Detroit", "Dallas"),
    "Canada": ("Toronto", "Montreal", "Vancouver", "Calgary", "Ottawa", "Edmonton", "Winnipeg"),
    "Brazil": ("Rio de Janeiro", "Sao Paulo", "Brasilia", "Fortaleza", "Recife", "Manaus", "Porto Alegre"),
    "Mexico": ("Guadalajara", "Monterrey", "Cancun", "Tijuana", "Puebla", "Acapulco"),
    "Argentina": ("Buenos Aires", "Rosario", "Mendoza"),
    "Australia": ("Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra"),
    "Egypt": ("Cairo", "Alexandria", "Luxor", "Giza"),
    "Turkey": ("Istanbul", "Ankara", "Izmir", "Antalya"),
    "South Korea": ("Seoul", "Busan", "Incheon", "Daegu"),
    "Nigeria": ("Lagos", "Abuja", "Kano", "Ibadan"),
    "South Africa": ("Johannesburg", "Cape Town", "Durban", "Pretoria"),
    "Kenya": ("Nairobi", "Mombasa"),
    "the Netherlands": ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven"),
    "Belgium": ("Brussels", "Antwerp", "Bruges", "Ghent"),
    "Poland": ("Warsaw", "Krakow", "Gdansk", "Wroclaw"),
    "Sweden": ("Stockholm", "Gothenburg", "Malmo"),
    "Norway": ("Oslo", "Bergen"),
    "Greece": ("Athens", "Thessaloniki"),
    "Portugal": ("Lisbon", "Porto"),
    "Austria": ("Vienna", "Salzburg", "Innsbruck"),
    "Switzerland": ("Zurich", "Geneva", "Basel", "Bern"),
    "Thailand": ("Bangkok", "Chiang Mai", "Phuket"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City", "Da Nang"),
    "Indonesia": ("Jakarta", "Surabaya", "Bandung"),
    "Pakistan": ("Karachi", "Lahore", "Islamabad"),
    "Iran": ("Tehran", "Isfahan", "Shiraz"),
    "Saudi Arabia": ("Riyadh", "Jeddah", "Mecca"),
    "the Philippines": ("Manila", "Cebu", "Davao"),
    "Peru": ("Lima", "Cusco", "Arequipa"),
    "Colombia": ("Bogota", "Medellin", "Cali"),
    "Chile": ("Valparaiso",),
    "Ireland": ("Dublin", "Cork"),
    "the Czech Republic": ("Prague", "Brno"),
    "Hungary": ("Budapest",),
    "Denmark": ("Copenhagen", "Aarhus"),
    "Finland": ("Helsinki",),
    "Ukraine": ("Kyiv", "Kharkiv", "Odesa"),
    "Israel": ("Jerusalem", "Tel Aviv", "Haifa"),
    "Morocco": ("Casablanca", "Marrakesh", "Rabat", "Fez"),
    "Ethiopia": ("Addis Ababa",),
    "Cuba": ("Havana",),
}

UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# "{}" is a number word; the label of the `numbers` dataset is the number itself (a ridge target)
NUMBER_TEMPLATES = ("The number is {}.", "I counted {} apples.", "There were {} people in the room.",
                    "The box holds {} books.")

SENTIMENT_NOUNS = ("movie", "meal", "concert", "hotel", "book", "service", "trip", "game", "show",
                   "weather", "party", "performance")
POSITIVE_WORDS = ("wonderful", "excellent", "delightful", "fantastic", "superb", "brilliant", "lovely",
                  "pleasant", "amazing", "charming", "enjoyable", "marvelous", "great", "terrific",
                  "beautiful", "outstanding", "impressive", "joyful", "perfect", "fabulous")
NEGATIVE_WORDS = ("terrible", "awful", "horrible", "dreadful", "disappointing", "boring", "unpleasant",
                  "miserable", "poor", "disgusting", "annoying", "mediocre", "painful", "dull", "ugly",
                  "tedious", "pathetic", "lousy", "frustrating", "bad")
# "{noun}" and "{adj}" are filled in; "{not}" becomes "not " in the negated variant
SENTIMENT_TEMPLATES = ("The {noun} was {not}{adj}.", "I thought the {noun} was {not}{adj}.",
                       "Honestly, the {noun} was {not}{adj}.")
