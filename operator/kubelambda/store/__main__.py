from kubelambda.store.server import main

main()
