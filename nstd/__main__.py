from nstd.cli import main

raise SystemExit(main())
