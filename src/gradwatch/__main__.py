from gradwatch.cli import main

raise SystemExit(main())
