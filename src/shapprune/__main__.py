from shapprune.cli import main

main()
