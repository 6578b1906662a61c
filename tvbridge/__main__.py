from tvbridge.cli import main

raise SystemExit(main())
