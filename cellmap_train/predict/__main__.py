from cellmap_train.predict.entry import main

if __name__ == "__main__":
    main()
