from portal_boot.cli import main

main()
