from hivemind.cli.app import main

main()
