from timpy.cli.main import main

main()
