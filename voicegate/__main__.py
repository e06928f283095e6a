from voicegate.cli import main

raise SystemExit(main())
