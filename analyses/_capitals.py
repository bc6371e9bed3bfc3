"""Capital-city questions with answer checking, for the outcome-direction analysis.

Regions: sovereign countries, US states, Canadian provinces and territories, Australian states
and territories. Regions whose capital contains the region's own name (Mexico City, Kuwait City,
Luxembourg, Oklahoma City, Quebec City, ...) and countries whose name is ambiguous or whose
capital is disputed (Georgia, Israel) are left out, so that echoing the question can never count as
a correct answer. Each capital is a list of accepted spellings; an answer is correct when, after
the region's own name is removed (whole words), one accepted spelling occurs as a whole word
(case-insensitive). Where a country has several official capitals, each is accepted.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

COUNTRIES = """
Afghanistan: Kabul
Albania: Tirana|Tirane
Algeria: Algiers
Angola: Luanda
Antigua and Barbuda: Saint John's|St. John's|St John's
Argentina: Buenos Aires
Armenia: Yerevan
Australia: Canberra
Austria: Vienna
Azerbaijan: Baku
the Bahamas: Nassau
Bahrain: Manama
Bangladesh: Dhaka
Barbados: Bridgetown
Belarus: Minsk
Belgium: Brussels
Belize: Belmopan
Benin: Porto-Novo|Porto Novo
Bhutan: Thimphu
Bolivia: Sucre|La Paz
Bosnia and Herzegovina: Sarajevo
Botswana: Gaborone
Brazil: Brasília|Brasilia
Brunei: Bandar Seri Begawan
Bulgaria: Sofia
Burkina Faso: Ouagadougou
Burundi: Gitega|Bujumbura
Cape Verde: Praia
Cambodia: Phnom Penh
Cameroon: Yaoundé|Yaounde
Canada: Ottawa
the Central African Republic: Bangui
Chad: N'Djamena|Ndjamena|N’Djamena
Chile: Santiago
China: Beijing|Peking
Colombia: Bogotá|Bogota
Comoros: Moroni
the Democratic Republic of the Congo: Kinshasa
the Republic of the Congo: Brazzaville
Costa Rica: San José|San Jose
Ivory Coast: Yamoussoukro
Croatia: Zagreb
Cuba: Havana
Cyprus: Nicosia
the Czech Republic: Prague
Denmark: Copenhagen
Dominica: Roseau
the Dominican Republic: Santo Domingo
Ecuador: Quito
Egypt: Cairo
El Salvador: San Salvador
Equatorial Guinea: Malabo
Eritrea: Asmara
Estonia: Tallinn
Eswatini: Mbabane|Lobamba
Ethiopia: Addis Ababa
Fiji: Suva
Finland: Helsinki
France: Paris
Gabon: Libreville
the Gambia: Banjul
Germany: Berlin
Ghana: Accra
Greece: Athens
Grenada: Saint George's|St. George's|St George's
Guinea: Conakry
Guinea-Bissau: Bissau
Guyana: Georgetown
Haiti: Port-au-Prince
Honduras: Tegucigalpa
Hungary: Budapest
Iceland: Reykjavik|Reykjavík
India: New Delhi|Delhi
Indonesia: Jakarta
Iran: Tehran|Teheran
Iraq: Baghdad
Ireland: Dublin
Italy: Rome
Jamaica: Kingston
Japan: Tokyo
Jordan: Amman
Kazakhstan: Astana|Nur-Sultan
Kenya: Nairobi
Kiribati: Tarawa|South Tarawa
Kyrgyzstan: Bishkek
Laos: Vientiane
Latvia: Riga
Lebanon: Beirut
Lesotho: Maseru
Liberia: Monrovia
Libya: Tripoli
Liechtenstein: Vaduz
Lithuania: Vilnius
Madagascar: Antananarivo
Malawi: Lilongwe
Malaysia: Kuala Lumpur|Putrajaya
the Maldives: Malé|Male
Mali: Bamako
Malta: Valletta
the Marshall Islands: Majuro
Mauritania: Nouakchott
Mauritius: Port Louis
Micronesia: Palikir
Moldova: Chișinău|Chisinau|Kishinev
Mongolia: Ulaanbaatar|Ulan Bator
Montenegro: Podgorica
Morocco: Rabat
Mozambique: Maputo
Myanmar: Naypyidaw|Nay Pyi Taw|Naypyitaw
Namibia: Windhoek
Nauru: Yaren
Nepal: Kathmandu
the Netherlands: Amsterdam
New Zealand: Wellington
Nicaragua: Managua
Niger: Niamey
Nigeria: Abuja
North Korea: Pyongyang
North Macedonia: Skopje
Norway: Oslo
Oman: Muscat
Pakistan: Islamabad
Palau: Ngerulmud|Melekeok
Papua New Guinea: Port Moresby
Paraguay: Asunción|Asuncion
Peru: Lima
the Philippines: Manila
Poland: Warsaw
Portugal: Lisbon
Qatar: Doha
Romania: Bucharest
Russia: Moscow
Rwanda: Kigali
Saint Kitts and Nevis: Basseterre
Saint Lucia: Castries
Saint Vincent and the Grenadines: Kingstown
Samoa: Apia
Saudi Arabia: Riyadh
Senegal: Dakar
Serbia: Belgrade
Seychelles: Victoria
Sierra Leone: Freetown
Slovakia: Bratislava
Slovenia: Ljubljana
the Solomon Islands: Honiara
Somalia: Mogadishu
South Africa: Pretoria|Cape Town|Bloemfontein
South Korea: Seoul
South Sudan: Juba
Spain: Madrid
Sri Lanka: Sri Jayawardenepura Kotte|Kotte|Colombo
Sudan: Khartoum
Suriname: Paramaribo
Sweden: Stockholm
Switzerland: Bern|Berne
Syria: Damascus
Tajikistan: Dushanbe
Tanzania: Dodoma
Thailand: Bangkok
East Timor: Dili
Togo: Lomé|Lome
Tonga: Nuku'alofa|Nukualofa|Nuku’alofa
Trinidad and Tobago: Port of Spain|Port-of-Spain
Tunisia: Tunis
Turkey: Ankara
Turkmenistan: Ashgabat|Ashkhabad
Tuvalu: Funafuti
Uganda: Kampala
Ukraine: Kyiv|Kiev
the United Arab Emirates: Abu Dhabi
the United Kingdom: London
the United States: Washington
Uruguay: Montevideo
Uzbekistan: Tashkent
Vanuatu: Port Vila|Port-Vila
Venezuela: Caracas
Vietnam: Hanoi|Ha Noi
Yemen: Sanaa|Sana'a|Sana’a
Zambia: Lusaka
Zimbabwe: Harare
"""

US_STATES = """
Alabama: Montgomery
Alaska: Juneau
Arizona: Phoenix
Arkansas: Little Rock
California: Sacramento
Colorado: Denver
Connecticut: Hartford
Delaware: Dover
Florida: Tallahassee
Georgia: Atlanta
Hawaii: Honolulu
Idaho: Boise
Illinois: Springfield
Indiana: Indianapolis
Iowa: Des Moines
Kansas: Topeka
Kentucky: Frankfort
Louisiana: Baton Rouge
Maine: Augusta
Maryland: Annapolis
Massachusetts: Boston
Michigan: Lansing
Minnesota: Saint Paul|St. Paul|St Paul
Mississippi: Jackson
Missouri: Jefferson City
Montana: Helena
Nebraska: Lincoln
Nevada: Carson City
New Hampshire: Concord
New Jersey: Trenton
New Mexico: Santa Fe
New York: Albany
North Carolina: Raleigh
North Dakota: Bismarck
Ohio: Columbus
Oregon: Salem
Pennsylvania: Harrisburg
Rhode Island: Providence
South Carolina: Columbia
South Dakota: Pierre
Tennessee: Nashville
Texas: Austin
Utah: Salt Lake City
Vermont: Montpelier
Virginia: Richmond
Washington: Olympia
West Virginia: Charleston
Wisconsin: Madison
Wyoming: Cheyenne
"""

CANADA = """
Alberta: Edmonton
British Columbia: Victoria
Manitoba: Winnipeg
New Brunswick: Fredericton
Newfoundland and Labrador: Saint John's|St. John's|St John's
Nova Scotia: Halifax
Ontario: Toronto
Prince Edward Island: Charlottetown
Saskatchewan: Regina
"""

CANADA_TERRITORIES = """
the Northwest Territories: Yellowknife
Nunavut: Iqaluit
Yukon: Whitehorse
"""

AUSTRALIA = """
New South Wales: Sydney
Victoria: Melbourne
Queensland: Brisbane
South Australia: Adelaide
Western Australia: Perth
Tasmania: Hobart
"""

AUSTRALIA_TERRITORIES = """
the Northern Territory: Darwin
the Australian Capital Territory: Canberra
"""

GROUPS = (
    (COUNTRIES, "What is the capital of {}?"),
    (US_STATES, "What is the capital of the US state of {}?"),
    (CANADA, "What is the capital of the Canadian province of {}?"),
    (CANADA_TERRITORIES, "What is the capital of the Canadian territory of {}?"),
    (AUSTRALIA, "What is the capital of the Australian state of {}?"),
    (AUSTRALIA_TERRITORIES, "What is the capital of {}?"),
)


@dataclass(frozen=True)
class Item:
    """One question: the region, its accepted capitals and the prompt text."""

    region: str
    answers: tuple[str, ...]
    question: str

    def is_correct(self, answer: str) -> bool:
        return is_correct(answer, self.region, self.answers)


def _parse(block: str) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for line in block.strip().splitlines():
        region, caps = line.split(":", 1)
        out.append((region.strip(), tuple(c.strip() for c in caps.split("|"))))
    return out


def all_items() -> list[Item]:
    items = []
    for block, template in GROUPS:
        for region, caps in _parse(block):
            items.append(Item(region, caps, template.format(region)))
    return items


def _word(text: str) -> re.Pattern:
    return re.compile(r"(?<![\w'’-])" + re.escape(text) + r"(?![\w'’-])", re.IGNORECASE)


def is_correct(answer: str, region: str, capitals) -> bool:
    """Whether `answer` names one of `capitals` once the region's own name is removed."""
    name = region[4:] if region.lower().startswith("the ") else region
    text = _word(name).sub(" ", answer)
    return any(_word(c).search(text) for c in capitals)


def split_items(n_train: int, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """A seeded shuffle of every item into (train, test); test is everything after n_train."""
    items = all_items()
    if not 2 <= n_train < len(items):
        raise ValueError(f"n_train must be in 2..{len(items) - 1} ({len(items)} items), got {n_train}.")
    random.Random(seed).shuffle(items)
    return items[:n_train], items[n_train:]
