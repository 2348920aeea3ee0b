from konduktor.cli import main

main()
