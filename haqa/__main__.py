from haqa.cli import main

raise SystemExit(main())
