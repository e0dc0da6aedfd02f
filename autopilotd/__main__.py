from autopilotd.cli import main

main()
