"""The demo text adapters' training data, written here so ``python -m serve_app.demo.train``
reproduces the committed adapters: explanatory questions with a one-sentence answer in English and
in French, a pirate rewrite of the English answer, and SQL for questions about tables. The held-out
prompts (``HELD_OUT``, ``SQL_HELD_OUT``) are never trained on; serve_app.demo.effects scores them.
"""

# (question, one-sentence English answer, the same answer in French)
QA: list[tuple[str, str, str]] = [
    (
        "Why is exercise good for you?",
        "Exercise strengthens your heart, muscles and mood.",
        "L'exercice renforce le cœur, les muscles et le moral.",
    ),
    (
        "How do plants make their food?",
        "Plants use sunlight, water and air to make sugar by photosynthesis.",
        "Les plantes utilisent la lumière du soleil, l'eau et l'air pour fabriquer du sucre.",
    ),
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than red light, so the sky looks blue.",
        "L'air diffuse davantage la lumière bleue du soleil, donc le ciel paraît bleu.",
    ),
    (
        "How does a refrigerator keep food cold?",
        "A refrigerator pumps heat out of its inside with a cold fluid.",
        "Un réfrigérateur pompe la chaleur de l'intérieur avec un fluide froid.",
    ),
    (
        "What causes rain?",
        "Rain falls when water vapour in clouds cools into heavy drops.",
        "La pluie tombe quand la vapeur d'eau des nuages se refroidit en grosses gouttes.",
    ),
    (
        "Why do we need sleep?",
        "Sleep lets your body and brain rest and repair themselves.",
        "Le sommeil permet au corps et au cerveau de se reposer et de se réparer.",
    ),
    (
        "How do airplanes stay in the air?",
        "Their wings push air down, and that lifts the plane up.",
        "Leurs ailes poussent l'air vers le bas, et cela soulève l'avion.",
    ),
    (
        "What is the internet?",
        "The internet is a huge network that connects computers around the world.",
        "Internet est un immense réseau qui relie les ordinateurs du monde entier.",
    ),
    (
        "Why should I drink water every day?",
        "Your body needs water to stay cool, clean and working well.",
        "Le corps a besoin d'eau pour rester frais, propre et en bonne santé.",
    ),
    (
        "How does a bicycle work?",
        "Your legs turn the pedals, and a chain turns the back wheel.",
        "Les jambes tournent les pédales, et une chaîne fait tourner la roue arrière.",
    ),
    (
        "What is a volcano?",
        "A volcano is a mountain where hot melted rock comes out of the earth.",
        "Un volcan est une montagne où de la roche fondue sort de la terre.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "Trees stop making green chlorophyll, so yellow and red colours show.",
        "Les arbres arrêtent la chlorophylle verte, donc le jaune et le rouge apparaissent.",
    ),
    (
        "How can I learn a new language?",
        "Practise a little every day by reading, listening and speaking.",
        "Il faut pratiquer un peu chaque jour en lisant, en écoutant et en parlant.",
    ),
    (
        "What does a computer's memory do?",
        "Memory holds the data and programs the computer is using right now.",
        "La mémoire garde les données et les programmes que l'ordinateur utilise maintenant.",
    ),
    (
        "Why is the ocean salty?",
        "Rivers carry salt from rocks into the sea, and the salt stays there.",
        "Les rivières apportent le sel des roches dans la mer, et le sel y reste.",
    ),
    (
        "How do vaccines work?",
        "Vaccines teach your immune system to recognise a germ before you meet it.",
        "Les vaccins apprennent au système immunitaire à reconnaître un microbe à l'avance.",
    ),
    (
        "What is gravity?",
        "Gravity is the force that pulls things toward each other, like us toward the earth.",
        "La gravité est la force qui attire les objets les uns vers les autres.",
    ),
    (
        "How do I make a good cup of tea?",
        "Pour hot water over the tea and let it steep for three minutes.",
        "Versez de l'eau chaude sur le thé et laissez-le infuser trois minutes.",
    ),
    (
        "Why do cats purr?",
        "Cats purr when they feel calm, and sometimes to soothe themselves.",
        "Les chats ronronnent quand ils sont calmes, et parfois pour se rassurer.",
    ),
    (
        "What is climate change?",
        "Climate change is the long warming of the earth caused mostly by burning fuel.",
        "Le changement climatique est le réchauffement de la terre causé surtout par les carburants.",  # noqa: E501
    ),
    (
        "How does the heart pump blood?",
        "The heart squeezes its muscle walls to push blood through the body.",
        "Le cœur contracte ses parois musclées pour pousser le sang dans le corps.",
    ),
    (
        "Why do we have seasons?",
        "The earth is tilted, so each half gets more sun at different times of the year.",
        "La terre est inclinée, donc chaque moitié reçoit plus de soleil à des moments différents.",
    ),
    (
        "How do bees make honey?",
        "Bees collect nectar from flowers and dry it into honey in their hive.",
        "Les abeilles récoltent le nectar des fleurs et le transforment en miel dans la ruche.",
    ),
    (
        "What is a good way to save money?",
        "Put a small part of every payment aside before you spend the rest.",
        "Mettez de côté une petite partie de chaque salaire avant de dépenser le reste.",
    ),
    (
        "Why is reading important?",
        "Reading builds your vocabulary, knowledge and imagination.",
        "La lecture enrichit le vocabulaire, les connaissances et l'imagination.",
    ),
    (
        "How does a rainbow form?",
        "Raindrops bend sunlight and split it into its colours.",
        "Les gouttes de pluie courbent la lumière du soleil et la séparent en couleurs.",
    ),
    (
        "What do doctors do?",
        "Doctors find out why people are ill and help them get better.",
        "Les médecins cherchent pourquoi les gens sont malades et les aident à guérir.",
    ),
    (
        "How do fish breathe underwater?",
        "Fish take oxygen from the water with their gills.",
        "Les poissons prennent l'oxygène de l'eau avec leurs branchies.",
    ),
    (
        "Why do we celebrate birthdays?",
        "Birthdays mark another year of life with the people we love.",
        "Les anniversaires fêtent une année de vie de plus avec les gens que nous aimons.",
    ),
    (
        "How does a phone camera take a picture?",
        "A tiny sensor turns the light from the lens into numbers.",
        "Un petit capteur transforme la lumière de l'objectif en nombres.",
    ),
    (
        "What is electricity?",
        "Electricity is the flow of tiny charged particles called electrons.",
        "L'électricité est le mouvement de petites particules chargées appelées électrons.",
    ),
    (
        "How can I sleep better?",
        "Go to bed at the same time every night and avoid screens before sleep.",
        "Couchez-vous à la même heure chaque soir et évitez les écrans avant de dormir.",
    ),
    (
        "Why do birds migrate?",
        "Birds fly to warmer places in winter to find food.",
        "Les oiseaux partent vers des pays plus chauds en hiver pour trouver de la nourriture.",
    ),
    (
        "What is the moon made of?",
        "The moon is made of rock and dust.",
        "La lune est faite de roche et de poussière.",
    ),
    (
        "How do magnets work?",
        "Magnets pull on iron because their tiny atoms all point the same way.",
        "Les aimants attirent le fer parce que leurs petits atomes pointent dans la même direction.",  # noqa: E501
    ),
    (
        "Why is breakfast important?",
        "Breakfast gives you energy to start the day.",
        "Le petit déjeuner donne de l'énergie pour commencer la journée.",
    ),
    (
        "How does a car engine work?",
        "Small explosions of fuel push pistons that turn the wheels.",
        "De petites explosions de carburant poussent les pistons qui font tourner les roues.",
    ),
    (
        "What is a black hole?",
        "A black hole is a place in space where gravity is so strong that even light cannot escape.",  # noqa: E501
        "Un trou noir est un endroit de l'espace où la gravité retient même la lumière.",
    ),
    (
        "How do I stay focused while studying?",
        "Study in short sessions in a quiet place and take small breaks.",
        "Étudiez par petites séances dans un endroit calme et faites des pauses.",
    ),
    (
        "Why do onions make you cry?",
        "Cutting an onion releases a gas that stings your eyes.",
        "Couper un oignon libère un gaz qui pique les yeux.",
    ),
    (
        "What is democracy?",
        "Democracy is a system where the people choose their leaders by voting.",
        "La démocratie est un système où le peuple choisit ses dirigeants par le vote.",
    ),
    (
        "How does soap clean your hands?",
        "Soap grabs oil and dirt so that water can wash them away.",
        "Le savon attrape la graisse et la saleté pour que l'eau les emporte.",
    ),
    (
        "Why do stars twinkle?",
        "Moving air bends the starlight, so the stars seem to flicker.",
        "L'air en mouvement courbe la lumière des étoiles, donc elles semblent scintiller.",
    ),
    (
        "What is a healthy diet?",
        "A healthy diet has plenty of vegetables, fruit, grains and water.",
        "Une alimentation saine contient beaucoup de légumes, de fruits, de céréales et d'eau.",
    ),
    (
        "How do trains run on tracks?",
        "The wheels have a lip that keeps them on the rails.",
        "Les roues ont un rebord qui les garde sur les rails.",
    ),
    (
        "Why is recycling useful?",
        "Recycling turns old things into new ones and saves resources.",
        "Le recyclage transforme les vieux objets en nouveaux et économise les ressources.",
    ),
    (
        "What is friendship?",
        "Friendship is a bond between people who care about and trust each other.",
        "L'amitié est un lien entre des personnes qui se font confiance.",
    ),
    (
        "How does a clock keep time?",
        "A clock counts the steady swings of a pendulum or a quartz crystal.",
        "Une horloge compte les oscillations régulières d'un pendule ou d'un cristal de quartz.",
    ),
]

# Never trained on: each adapter's effect is scored on these.
HELD_OUT: list[str] = [
    "Why do people need friends?",
    "How does the sun produce light?",
    "What is a good way to start running?",
    "Why do dogs wag their tails?",
    "How do computers store pictures?",
    "What makes a good teacher?",
    "How do ships float?",
    "Why do we dream?",
    "What is the best way to cook rice?",
    "How do earthquakes happen?",
    "Why is music important to people?",
    "How does a microwave heat food?",
    "What is an atom?",
    "How can I be more patient?",
    "Why do some animals hibernate?",
    "How does the brain remember things?",
    "What is the purpose of a map?",
    "Why do we have to pay taxes?",
    "How do clouds form?",
    "What should I pack for a beach holiday?",
]

# SQL: questions about tables; the answer is only the query.
_TABLES = {
    "employees": ("employee", ["name", "salary", "department", "age"], "salary"),
    "customers": ("customer", ["name", "city", "country", "email"], None),
    "orders": ("order", ["id", "customer_id", "total", "created_at"], "total"),
    "products": ("product", ["name", "price", "category", "stock"], "price"),
    "students": ("student", ["name", "grade", "age", "class"], "grade"),
    "books": ("book", ["title", "author", "year", "pages"], "pages"),
    "movies": ("movie", ["title", "director", "year", "rating"], "rating"),
    "cities": ("city", ["name", "country", "population", "area"], "population"),
}


def _sql_pairs(tables: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for t in tables:
        one, cols, num = _TABLES[t]
        text = cols[1] if cols[0] == "id" else cols[0]
        pairs.append((f"How many rows are in the {t} table?", f"SELECT COUNT(*) FROM {t};"))
        pairs.append(
            (f"List the {text} of every {one} in the {t} table.", f"SELECT {text} FROM {t};")
        )
        pairs.append(
            (
                f"Show all {t} sorted by {cols[2]}.",
                f"SELECT * FROM {t} ORDER BY {cols[2]};",
            )
        )
        if num:
            pairs.append(
                (f"What is the average {num} in the {t} table?", f"SELECT AVG({num}) FROM {t};")
            )
            pairs.append(
                (
                    f"Which {t} have a {num} greater than 100?",
                    f"SELECT * FROM {t} WHERE {num} > 100;",
                )
            )
        else:
            pairs.append(
                (
                    f"Find the {t} whose {cols[2]} is 'France'.",
                    f"SELECT * FROM {t} WHERE {cols[2]} = 'France';",
                )
            )
        pairs.append(
            (
                f"Count the {t} in the {t} table for each {cols[2]}.",
                f"SELECT {cols[2]}, COUNT(*) FROM {t} GROUP BY {cols[2]};",
            )
        )
    return pairs


SQL_TRAIN: list[tuple[str, str]] = _sql_pairs(
    ["employees", "customers", "orders", "products", "students", "books"]
)
SQL_HELD_OUT: list[str] = [
    "How many rows are in the movies table?",
    "List the title of every movie in the movies table.",
    "Which movies have a rating greater than 8?",
    "What is the average population in the cities table?",
    "Show all cities sorted by country.",
    "Count the movies in the movies table for each year.",
    "Which cities have a population greater than 1000000?",
    "List the name of every city in the cities table.",
    "What is the highest salary in the employees table?",
    "Which customers live in the city 'Paris'?",
    "How many orders are in the orders table for customer 7?",
    "Show the five most expensive products.",
    "List the students in the students table older than 12.",
    "Which books in the books table were written by 'Tolkien'?",
    "What is the total of all orders in the orders table?",
    "Show the movies directed by 'Nolan', newest first.",
    "How many employees work in each department?",
    "Find the products in the products table with no stock.",
    "What is the smallest area in the cities table?",
    "List the titles of books with more than 300 pages.",
]

_PIRATE_OPEN = ["Arr, matey!", "Ahoy, me hearty!", "Aye, matey!", "Arr!"]
_PIRATE_CLOSE = ["Yo ho ho!", "Arr!", "Savvy, matey?", "Now hoist the sails!"]
_PIRATE_WORDS = {
    "you": "ye",
    "your": "yer",
    "You": "Ye",
    "Your": "Yer",
    "is": "be",
    "are": "be",
    "my": "me",
    "the": "th'",
    "friend": "matey",
    "friends": "mateys",
}


def pirate(answer: str, i: int) -> str:
    """An English answer rewritten as a pirate would say it (deterministic in ``i``)."""
    words = [_PIRATE_WORDS.get(w, w) for w in answer.split(" ")]
    return f"{_PIRATE_OPEN[i % 4]} {' '.join(words)} {_PIRATE_CLOSE[(i // 4) % 4]}"


def datasets() -> dict[str, list[tuple[str, str]]]:
    """Adapter name -> (user prompt, assistant answer) pairs."""
    return {
        "pirate": [(q, pirate(en, i)) for i, (q, en, _) in enumerate(QA)],
        "french": [(q, fr) for q, _, fr in QA],
        "sql": SQL_TRAIN,
        "short": [(q, en) for q, en, _ in QA],
    }
