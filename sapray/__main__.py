from sapray.cli import main

main()
